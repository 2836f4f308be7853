"""Bearer JWTs from a company's SSO, verified offline against a JWKS file, with claims mapped to a principal.

The JWKS is read once (on the first token) from ``RAGOPS_SECURITY__JWKS``; a token must name one of its keys
(``kid``), be signed with an accepted public-key algorithm, be unexpired (``exp`` is required), and match the
configured audience and issuer. Its ``sub`` is the principal's name; the role, tenant and groups come from the
configured claims. A role claim that is not reader, operator or admin is refused rather than guessed. PyJWT does the
verification; nothing here parses signatures by hand.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.security.authz import KEY_ROLES
from rag.security.errors import AuthenticationFailed
from rag.stages.context import Principal

_PUBLIC_KEY_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})


def looks_like_jwt(token: str) -> bool:
    """Three base64url parts: a JWT, not an ``rgo_`` API key."""
    return token.count(".") == 2 and not token.startswith("rgo_")


class JwtVerifier:
    """Checks tokens against one JWKS file."""

    def __init__(
        self,
        jwks: Path,
        *,
        audience: str | None,
        issuer: str | None,
        algorithms: Sequence[str],
        role_claim: str = "role",
        tenant_claim: str = "tenant",
        groups_claim: str = "groups",
    ) -> None:
        unsafe = sorted(set(algorithms) - _PUBLIC_KEY_ALGORITHMS)
        if unsafe:
            raise ValueError(f"JWT algorithms {unsafe} are not public-key signatures; use e.g. RS256 or ES256")
        self._path = jwks
        self._audience = audience
        self._issuer = issuer
        self._algorithms = list(algorithms)
        self._claims = (role_claim, tenant_claim, groups_claim)
        self._keys: dict[str, Any] | None = None
        self._lock = threading.Lock()

    def _keyset(self) -> dict[str, Any]:
        if self._keys is None:
            with self._lock:
                if self._keys is None:
                    import jwt

                    try:
                        keyset = jwt.PyJWKSet.from_json(self._path.read_text(encoding="utf-8"))
                    except (OSError, jwt.PyJWTError) as exc:
                        raise AuthenticationFailed(f"the JWKS file {self._path} cannot be used: {exc}", "jwks") from exc
                    self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        return self._keys

    def principal(self, token: str) -> Principal:
        """The principal ``token`` stands for, or :class:`AuthenticationFailed` saying why not."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed("the bearer token is not a valid JWT", "malformed") from exc
        key = self._keyset().get(str(header.get("kid")))
        if key is None:
            raise AuthenticationFailed("the JWT is signed by a key the JWKS does not have", "jwt_unknown_key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed("the JWT has expired", "expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed(f"the JWT is not valid: {exc}", "jwt_invalid") from exc
        role_claim, tenant_claim, groups_claim = self._claims
        role = claims.get(role_claim)
        if role not in KEY_ROLES:
            raise AuthenticationFailed(
                f"the JWT's {role_claim!r} claim must be one of {', '.join(KEY_ROLES)}", "jwt_role"
            )
        groups = claims.get(groups_claim) or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise AuthenticationFailed(f"the JWT's {groups_claim!r} claim must be a list of strings", "jwt_groups")
        tenant = claims.get(tenant_claim)
        return Principal(
            name=str(claims["sub"]),
            role=str(role),
            tenant=str(tenant) if tenant is not None else None,
            groups=tuple(groups),
        )
