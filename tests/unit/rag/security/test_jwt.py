"""Bearer JWTs verified offline against a local JWKS file: claims become the principal; anything not signed by a
JWKS key, expired, for another audience or issuer, or without a known role is a 401 (and audited)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from flows.settings import Settings
from rag.security.errors import AuthenticationFailed, PermissionDenied
from rag.security.gate import Gate


@pytest.fixture(scope="module")
def signing_keys() -> tuple[Any, Any]:
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


@pytest.fixture
def gate(settings: Settings, tmp_path: Path, signing_keys: tuple[Any, Any]) -> Iterator[Gate]:
    trusted, _ = signing_keys
    jwk = json.loads(RSAAlgorithm.to_jwk(trusted.public_key()))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "sso-1", "use": "sig", "alg": "RS256"}]}))
    security = settings.security.model_copy(
        update={"jwks": jwks, "jwt_audience": "ragops", "jwt_issuer": "https://sso.example"}
    )
    built = Gate(settings.model_copy(update={"security": security}))
    yield built
    built.close()


def token(key: Any, *, kid: str = "sso-1", **claims: Any) -> str:
    body = {
        "sub": "alice@acme",
        "aud": "ragops",
        "iss": "https://sso.example",
        "exp": int(time.time()) + 600,
        "role": "reader",
        "tenant": "acme",
        "groups": ["hr"],
        **claims,
    }
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm="RS256", headers={"kid": kid})


def test_a_valid_token_becomes_the_principal(gate: Gate, signing_keys: tuple[Any, Any]) -> None:
    principal = gate.check("POST", "/v1/query", f"Bearer {token(signing_keys[0])}")
    assert (principal.name, principal.role, principal.tenant, principal.groups) == (
        "alice@acme",
        "reader",
        "acme",
        ("hr",),
    )
    assert gate.check_fast("POST", "/v1/query", f"Bearer {token(signing_keys[0])}") == principal


def test_the_role_claim_is_enforced_by_the_table(gate: Gate, signing_keys: tuple[Any, Any]) -> None:
    with pytest.raises(PermissionDenied):
        gate.check("GET", "/v1/stack", f"Bearer {token(signing_keys[0])}")
    assert gate.check("GET", "/v1/stack", f"Bearer {token(signing_keys[0], role='operator')}").role == "operator"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"exp": int(time.time()) - 10}, "expired"),
        ({"aud": "another-service"}, "jwt_invalid"),
        ({"iss": "https://evil.example"}, "jwt_invalid"),
        ({"exp": None}, "jwt_invalid"),
        ({"role": "superuser"}, "jwt_role"),
        ({"groups": "hr"}, "jwt_groups"),
        ({"kid": "unknown"}, "jwt_unknown_key"),
    ],
)
def test_tokens_that_must_not_pass(
    gate: Gate, signing_keys: tuple[Any, Any], claims: dict[str, Any], reason: str
) -> None:
    """LLM02 (sensitive information disclosure): only the configured SSO's unexpired tokens for this service."""
    kid = claims.pop("kid", "sso-1")
    with pytest.raises(AuthenticationFailed) as failed:
        gate.check("POST", "/v1/query", f"Bearer {token(signing_keys[0], kid=kid, **claims)}")
    assert failed.value.reason == reason
    assert gate.audit.records()[-1].outcome == reason


def test_a_token_signed_by_another_key_or_with_alg_none_is_refused(gate: Gate, signing_keys: tuple[Any, Any]) -> None:
    with pytest.raises(AuthenticationFailed, match="not valid"):
        gate.authenticate(f"Bearer {token(signing_keys[1])}")  # right kid, wrong key
    unsigned = jwt.encode({"sub": "mallory", "role": "admin", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(AuthenticationFailed):
        gate.authenticate(f"Bearer {unsigned}")


def test_api_keys_still_work_beside_jwts(gate: Gate) -> None:
    issued = gate.keys.create(role="admin")
    assert gate.authenticate(f"Bearer {issued.secret}").role == "admin"
