"""API keys: the lifecycle (create, use, expire, revoke, refused afterwards) and what is (not) stored."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.settings import Settings
from rag.security.errors import AuthenticationFailed, PermissionDenied, UnknownKey
from rag.security.gate import Gate, check_exposure


@pytest.fixture
def gate(settings: Settings) -> Iterator[Gate]:
    built = Gate(settings)
    yield built
    built.close()


def test_a_key_is_shown_once_and_only_its_keyed_hash_is_stored(gate: Gate, settings: Settings) -> None:
    """LLM02 (sensitive information disclosure): the database alone does not give the key away."""
    issued = gate.keys.create(role="reader", tenant="acme", name="alice", created_by="tests")
    assert issued.secret.startswith(f"rgo_{issued.key.prefix}_") and len(issued.secret) > 40
    stored = (settings.home / "security.db").read_bytes()
    assert issued.secret.encode() not in stored and issued.secret.split("_", 2)[2].encode() not in stored
    secret = settings.home / "secrets" / "server.secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE((settings.home / "secrets").stat().st_mode) == 0o700
    principal = gate.authenticate(f"Bearer {issued.secret}")
    assert (principal.name, principal.role, principal.tenant) == ("alice", "reader", "acme")


def test_lifecycle_create_use_expire_revoke(gate: Gate) -> None:
    issued = gate.keys.create(role="operator", expires_days=1, created_by="tests")
    token = issued.secret
    assert gate.keys.authenticate(token).role == "operator"
    assert gate.keys.cached(token) is not None  # the second use is served from memory
    tomorrow = time.time() + 86400 + 1
    with pytest.raises(AuthenticationFailed, match="expired") as expired:
        gate.keys.authenticate(token, now=tomorrow)
    assert expired.value.reason == "expired"
    gate.keys.revoke(issued.key.prefix)
    assert gate.keys.cached(token) is None
    with pytest.raises(AuthenticationFailed, match="revoked"):
        gate.keys.authenticate(token)
    assert [k.state() for k in gate.keys.list()] == ["revoked"]


def test_a_revocation_by_another_process_bites_once_the_cache_entry_is_stale(settings: Settings) -> None:
    service = Gate(settings.model_copy(update={"security": settings.security.model_copy(update={"key_cache_s": 0})}))
    cli = Gate(settings)
    try:
        issued = cli.keys.create(role="reader")
        assert service.keys.authenticate(issued.secret).prefix == issued.key.prefix
        cli.keys.revoke(issued.key.prefix)
        with pytest.raises(AuthenticationFailed, match="revoked"):
            service.keys.authenticate(issued.secret)
    finally:
        service.close()
        cli.close()


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("Basic dXNlcjpwdw==", "malformed"),
        ("Bearer ", "malformed"),
        ("Bearer not-a-key", "malformed"),
        ("Bearer rgo_00000000_" + "A" * 43, "unknown"),
    ],
)
def test_bad_credentials_are_refused_with_a_reason(gate: Gate, header: str | None, reason: str) -> None:
    with pytest.raises(AuthenticationFailed) as failed:
        gate.authenticate(header)
    assert failed.value.reason == reason


def test_a_known_prefix_with_a_wrong_secret_is_refused(gate: Gate) -> None:
    issued = gate.keys.create(role="admin")
    forged = issued.secret[:-4] + ("AAAA" if not issued.secret.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthenticationFailed, match="not valid"):
        gate.authenticate(f"Bearer {forged}")


def test_roles_and_expiry_are_validated(gate: Gate) -> None:
    with pytest.raises(ValueError, match="unknown role"):
        gate.keys.create(role="root")
    with pytest.raises(ValueError, match="public"):
        gate.keys.create(role="public")
    with pytest.raises(ValueError, match="positive"):
        gate.keys.create(role="reader", expires_days=0)
    with pytest.raises(UnknownKey, match="ffffffff"):
        gate.keys.revoke("ffffffff")


def test_check_audits_failures_and_denials(gate: Gate) -> None:
    reader = gate.keys.create(role="reader").secret
    with pytest.raises(AuthenticationFailed):
        gate.check("POST", "/v1/query", None)
    with pytest.raises(PermissionDenied, match="needs operator"):
        gate.check("GET", "/v1/stack", f"Bearer {reader}")
    with pytest.raises(PermissionDenied, match="not in the authorisation table"):
        gate.check("DELETE", "/v1/everything", f"Bearer {reader}")
    assert gate.check("POST", "/v1/query", f"Bearer {reader}").role == "reader"
    records = gate.audit.records()
    assert [(r.action, r.outcome) for r in records] == [
        ("auth.failed", "missing"),
        ("denied", "denied"),
        ("denied", "denied"),
    ]
    assert reader not in repr([r.to_json() for r in records])
    assert gate.audit.verify().ok


def test_admin_key_is_created_once_with_mode_0600(gate: Gate, settings: Settings) -> None:
    path = gate.ensure_admin_key(actor="tests")
    assert path == settings.home / "secrets" / "admin.key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert gate.authenticate(f"Bearer {Path(path).read_text().strip()}").role == "admin"
    assert gate.ensure_admin_key(actor="tests") is None  # the second start keeps the first key
    assert [k.name for k in gate.keys.list()] == ["admin"]


def test_auth_off_is_refused_on_a_non_loopback_address(settings: Settings) -> None:
    off = settings.model_copy(update={"security": settings.security.model_copy(update={"auth": False})})
    check_exposure(off, "127.0.0.1")
    check_exposure(settings, "0.0.0.0")  # auth on: any address
    with pytest.raises(ValueError, match="refusing to serve on 0.0.0.0 with authentication switched off"):
        check_exposure(off, "0.0.0.0")


def test_a_client_address_past_its_failed_attempts_is_locked_out(settings: Settings) -> None:
    """OWASP LLM10 / key guessing: refused credentials are counted per client address; past the limit every
    credential from that address (a valid one too: "valid" would be the guessing oracle) is 429 until the window
    has room, on the fast path as on the slow one. Other addresses and requests without a credential are not
    affected."""
    from rag.errors import RateLimited

    security = settings.security.model_copy(update={"failed_auth_per_minute": 3})
    gate = Gate(settings.model_copy(update={"security": security}))
    try:
        valid = f"Bearer {gate.keys.create(role='reader').secret}"
        assert gate.check("POST", "/v1/query", valid, client="10.0.0.1").role == "reader"  # now cached
        for _ in range(5):  # no credential at all is not a guess
            with pytest.raises(AuthenticationFailed):
                gate.check("POST", "/v1/query", None, client="10.0.0.1")
        for guess in ("rgo_deadbeef_" + "x" * 43, "Bearer-less", valid[:-2] + "zz"):
            with pytest.raises(AuthenticationFailed):
                gate.check("POST", "/v1/query", f"Bearer {guess}", client="10.0.0.1")
        with pytest.raises(RateLimited) as locked:
            gate.check("POST", "/v1/query", valid, client="10.0.0.1")
        assert 1 <= locked.value.retry_after_s <= 60 and "failed_auth_per_minute" in str(locked.value)
        with pytest.raises(RateLimited):
            gate.check_fast("POST", "/v1/query", valid, client="10.0.0.1")
        assert gate.check_fast("GET", "/healthz", None, client="10.0.0.1") is not None  # public routes stay open
        assert gate.check("POST", "/v1/query", valid, client="10.0.0.2").role == "reader"
        assert [r.outcome for r in gate.audit.records() if r.action == "auth.failed"].count("missing") == 5
    finally:
        gate.close()
