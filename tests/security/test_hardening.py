"""Hardening of every response and request over a real socket: security headers, a bounded request body (declared
or chunked), and CORS off unless configured.

OWASP LLM10 (unbounded consumption): a huge body is refused with 413 before it is read or parsed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from flows.settings import Settings
from rag.errors import StackNotFound
from rag.types import StackConfig
from tests.fixtures.server import Running, api_client, serve

pytestmark = [pytest.mark.integration]

LIMIT = 4096


def _no_champion() -> tuple[int, StackConfig]:
    raise StackNotFound("no stack is promoted yet (ragops stack promote VERSION)")


def _serve(home: Path, **service: object) -> Iterator[Running]:
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    settings = Settings(home=home)
    settings = settings.model_copy(update={"service": settings.service.model_copy(update=service)})
    settings.ensure_dirs()
    with serve(create_app(settings, holder=StackHolder(settings, champion=_no_champion))) as running:
        yield running


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    yield from _serve(tmp_path_factory.mktemp("hardening") / "home", max_body_bytes=LIMIT)


def test_every_response_carries_the_security_headers(service: Running) -> None:
    with api_client(service.url, timeout=30) as client:
        responses = [client.get("/healthz"), client.post("/v1/query", json={"question": "x"}), client.get("/nope")]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff", response.url
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert "strict-transport-security" not in response.headers  # plain HTTP: HSTS would be a lie


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_refused_with_413(service: Running, chunked: bool) -> None:
    """OWASP LLM10: the body is refused by its declared size, or cut off once a chunked body passes the bound."""
    payload = b'{"question": "' + b"a" * (LIMIT * 4) + b'"}'

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(payload), 1024):
            yield payload[i : i + 1024]

    with api_client(service.url, timeout=30) as client:
        response = client.post(
            "/v1/query",
            content=pieces() if chunked else payload,
            headers={"content-type": "application/json"},
        )
        still_fine = client.post("/v1/query", json={"question": "a" * 100})
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert str(LIMIT) in error["message"] and response.headers["x-content-type-options"] == "nosniff"
    assert still_fine.status_code == 503  # a normal body passes (and meets no stack)


def test_cors_is_off_by_default_and_on_for_configured_origins(service: Running, tmp_path: Path) -> None:
    origin = {"Origin": "https://intranet.example"}
    with api_client(service.url, timeout=30) as client:
        closed = client.get("/healthz", headers=origin)
    assert "access-control-allow-origin" not in closed.headers
    for running in _serve(tmp_path / "home", cors_origins=["https://intranet.example"]):
        preflight = httpx.options(
            f"{running.url}/v1/query",
            headers={**origin, "Access-Control-Request-Method": "POST"},
            timeout=30,
        )
        assert preflight.headers["access-control-allow-origin"] == "https://intranet.example"
        other = httpx.get(f"{running.url}/healthz", headers={"Origin": "https://evil.example"}, timeout=30)
        assert "access-control-allow-origin" not in other.headers


def test_a_header_block_over_the_limit_is_refused_with_431(service: Running) -> None:
    """OWASP LLM10: uvicorn's httptools parser bounds no header size, so a 200 KB header used to reach the routes
    (answered 200); the service refuses a head over ``service.max_header_bytes`` before authentication runs."""
    with api_client(service.url, timeout=30) as client:
        response = client.post("/v1/query", json={"question": "x"}, headers={"x-padding": "a" * 64 * 1024})
        fine = client.post("/v1/query", json={"question": "x"}, headers={"x-padding": "a" * 4096})
    assert response.status_code == 431, response.text
    assert response.json()["error"]["code"] == "headers_too_large" and "32768 bytes" in response.text
    assert response.headers["x-frame-options"] == "DENY"
    assert fine.status_code == 503  # a normal head passes (and meets no stack)


def test_failed_authentications_are_limited_per_client_address(tmp_path: Path) -> None:
    """OWASP LLM10 / key guessing over HTTP: past ``failed_auth_per_minute`` refused keys, the address gets 429
    with Retry-After and the service's error envelope, for any key, until the window has room."""
    from rag.service.app import create_app
    from rag.service.holder import StackHolder

    settings = Settings(home=tmp_path / "home")
    settings = settings.model_copy(
        update={"security": settings.security.model_copy(update={"failed_auth_per_minute": 2})}
    )
    settings.ensure_dirs()
    app = create_app(settings, holder=StackHolder(settings, champion=_no_champion))
    with serve(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        guesses = [
            client.post(
                "/v1/query", json={"question": "x"}, headers={"Authorization": f"Bearer rgo_0000000{i}_{'x' * 43}"}
            )
            for i in range(3)
        ]
        valid = client.post("/v1/query", json={"question": "x"}, headers=running.headers)
        health = client.get("/healthz")
    assert [r.status_code for r in guesses] == [401, 401, 429]
    for locked in (guesses[2], valid):
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) >= 1
        assert "failed_auth_per_minute" in locked.json()["error"]["message"]
    assert health.status_code == 200
