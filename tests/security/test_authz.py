"""The authorisation table over a real served app on loopback: every route x every role x no key, plus the
credentials that must never pass (expired, revoked, malformed, forged), the ``openai`` client with a key, and no
key in any log.

The app serves no stack (its champion lookup says there is none), so an allowed request is answered 503 or 404
after it passed the gate: the walk is about who gets through, and takes a few seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flows.settings import Settings
from rag.errors import StackNotFound
from rag.security.authz import ROUTES
from rag.types import StackConfig
from tests.fixtures.server import Running, serve
from tests.security.walk import ROLES, app_routes, walk

pytestmark = [pytest.mark.integration]


def _no_champion() -> tuple[int, StackConfig]:
    raise StackNotFound("no stack is promoted yet (ragops stack promote VERSION)")


@dataclass
class Served:
    settings: Settings
    service: Running
    keys: dict[str, str]
    log: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    home = tmp_path_factory.mktemp("authz") / "home"
    settings = Settings(home=home)
    settings.ensure_dirs()
    app = create_app(settings, holder=StackHolder(settings, champion=_no_champion))

    @app.get("/v1/unlisted", include_in_schema=False)
    async def unlisted() -> dict[str, str]:  # a route someone forgot to put in the table
        return {"secret": "never served"}

    log = home / "logs" / "authz.log"
    handler = logging.FileHandler(log)
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    gate = app.state.gate
    keys = {role: gate.keys.create(role=role, name=f"walk-{role}").secret for role in ("reader", "operator", "admin")}
    try:
        with serve(app) as service:
            yield Served(settings, service, keys, log)
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()


def test_every_route_is_in_the_table(served: Served) -> None:
    """Every route the app serves has a row in the one authorisation table (a new route cannot ship unmapped)."""
    routes = [r for r in app_routes(served.service.app) if r[1] != "/v1/unlisted"]
    missing = [r for r in routes if ("GET" if r[0] == "HEAD" else r[0], r[1]) not in ROUTES]
    assert not missing, f"routes without an entry in rag.security.authz.ROUTES: {missing}"
    assert len(routes) >= 10


def test_the_whole_table_every_route_for_every_role_and_no_key(served: Served) -> None:
    """LLM02 / LLM06 (sensitive information disclosure, excessive agency): each role reaches exactly the routes
    the table gives it; without a key only the public routes answer; 401s carry WWW-Authenticate: Bearer."""
    routes = [r for r in app_routes(served.service.app) if r[1] != "/v1/unlisted"]
    cells = walk(served.service.url, routes, served.keys)
    assert len(cells) == len(routes) * len(ROLES)
    failed = [c for c in cells if not c.passed]
    assert not failed, failed
    # the table is not trivially permissive: each status the table can give occurs
    assert {c.expected for c in cells} == {None, 401, 403}


def test_a_route_missing_from_the_table_is_refused_even_to_admin(served: Served) -> None:
    """LLM02 (sensitive information disclosure): the gate fails closed for a route nobody mapped."""
    response = httpx.get(
        f"{served.service.url}/v1/unlisted", headers={"Authorization": f"Bearer {served.keys['admin']}"}
    )
    assert response.status_code == 403 and "not in the authorisation table" in response.json()["error"]["message"]


def test_credentials_that_must_not_pass(served: Served) -> None:
    """LLM02: expired, revoked, malformed and forged keys are 401 with a JSON error body, and audited."""
    gate = served.service.app.state.gate
    expired = gate.keys.create(role="admin", expires_days=1, now=time.time() - 2 * 86400).secret
    revoked = gate.keys.create(role="admin")
    gate.keys.revoke(revoked.key.prefix)
    forged = served.keys["admin"][:-3] + ("xyz" if not served.keys["admin"].endswith("xyz") else "abc")
    cases = {
        "expired": f"Bearer {expired}",
        "revoked": f"Bearer {revoked.secret}",
        "malformed": "Bearer hello",
        "basic": "Basic YWRtaW46YWRtaW4=",
        "forged": f"Bearer {forged}",
    }
    before = len(gate.audit.records())
    for name, header in cases.items():
        response = httpx.post(
            f"{served.service.url}/v1/query", json={"question": "x"}, headers={"Authorization": header}
        )
        assert response.status_code == 401, (name, response.text)
        assert response.headers["www-authenticate"].startswith('Bearer realm="ragops"'), name
        error = response.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error", (name, error)
    failures = [r for r in gate.audit.records()[before:] if r.action == "auth.failed"]
    assert sorted(r.outcome for r in failures) == ["expired", "malformed", "malformed", "revoked", "unknown"]
    assert gate.audit.verify().ok


def test_the_openai_client_authenticates_with_api_key(served: Served) -> None:
    """The official client sends api_key as a bearer token: a wrong key is its AuthenticationError, a valid one
    passes the gate (here to the service's 503: no stack is served)."""
    import openai

    wrong = openai.OpenAI(base_url=f"{served.service.url}/v1", api_key="rgo_deadbeef_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="rag-stack", messages=[{"role": "user", "content": "hi"}])
    client = openai.OpenAI(base_url=f"{served.service.url}/v1", api_key=served.keys["reader"], max_retries=0)
    assert [m.id for m in client.models.list()] == ["rag-stack"]
    with pytest.raises(openai.InternalServerError) as unavailable:
        client.chat.completions.create(model="rag-stack", messages=[{"role": "user", "content": "hi"}])
    assert unavailable.value.status_code == 503


def test_a_created_key_never_appears_in_logs_or_the_audit_trail(served: Served) -> None:
    """LLM02 (sensitive information disclosure): keys used, refused and revoked leave no trace of their secret
    in the log (every logger at DEBUG), the service's log folder or the security database."""
    gate = served.service.app.state.gate
    issued = gate.keys.create(role="reader", name="log-check")
    url = served.service.url
    headers = {"Authorization": f"Bearer {issued.secret}"}
    assert httpx.post(f"{url}/v1/query", json={"question": "x"}, headers=headers).status_code == 503
    assert httpx.get(f"{url}/v1/stack", headers=headers).status_code == 403
    gate.keys.revoke(issued.key.prefix)
    assert httpx.post(f"{url}/v1/query", json={"question": "x"}, headers=headers).status_code == 401
    secret = issued.secret.split("_", 2)[2]
    home = served.settings.home
    for path in [p for p in home.rglob("*") if p.is_file() and p.name != "server.secret"]:
        assert secret.encode() not in path.read_bytes(), f"the key's secret is in {path}"
    assert any(issued.key.prefix in r.actor for r in gate.audit.records())  # the prefix identifies it instead
