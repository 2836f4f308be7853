"""The security of one process: keys, the audit trail and the table, behind one object the service holds.

:class:`Gate` turns a bearer credential into a :class:`~rag.stages.context.Principal`, checks the action against
:mod:`rag.security.authz`, and audits failures and denials. The database and the server secret are opened on first
use (nothing happens at construction), so building the app stays free of I/O.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rag.errors import RateLimited
from rag.limits.rate import FailureLimiter
from rag.security.audit import AuditTrail, DetailValue
from rag.security.authz import allowed, required_role, route_action
from rag.security.db import open_engine, write_private
from rag.security.errors import AuthenticationFailed, PermissionDenied
from rag.security.jwt import JwtVerifier, looks_like_jwt
from rag.security.keys import KeyStore, key_prefix
from rag.stages.context import ANONYMOUS, LOCAL, Principal

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sqlalchemy import Engine

    from rag.security.keys import ApiKey
    from rag.settings import RagSettings

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def principal_of(key: ApiKey) -> Principal:
    """The principal an API key stands for."""
    return Principal(name=key.name, role=key.role, tenant=key.tenant, groups=key.groups)


def check_exposure(settings: RagSettings, host: str) -> None:
    """Refuse to listen on a non-loopback ``host`` with auth switched off (``ValueError`` with the fix)."""
    if not settings.security.auth and host not in LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing to serve on {host} with authentication switched off (RAGOPS_SECURITY__AUTH=false): "
            "anyone who can reach the port could query every document. Bind 127.0.0.1, or switch auth on and "
            "create keys with `ragops keys create`."
        )


class Gate:
    """Keys, audit and authorisation for one process (the service, a CLI command, a flow)."""

    def __init__(self, settings: RagSettings) -> None:
        self._settings = settings
        self._home = settings.home
        self.enabled = settings.security.auth
        self.audit_queries = settings.security.audit_queries
        self._url = settings.security.resolve_db_url(settings.home)
        self._secret_file = settings.security.resolve_secret_file(settings.home)
        self._cache_s = settings.security.key_cache_s
        self._engine: Engine | None = None
        self._keys: KeyStore | None = None
        self._audit: AuditTrail | None = None
        self._lock = threading.Lock()
        self._jwt: JwtVerifier | None = None
        security = settings.security
        per_minute = security.failed_auth_per_minute
        self._failures = FailureLimiter(per_minute) if per_minute and self.enabled else None
        if security.jwks is not None:
            self._jwt = JwtVerifier(
                security.jwks,
                audience=security.jwt_audience,
                issuer=security.jwt_issuer,
                algorithms=security.jwt_algorithms,
                role_claim=security.jwt_role_claim,
                tenant_claim=security.jwt_tenant_claim,
                groups_claim=security.jwt_groups_claim,
            )

    def _open(self) -> tuple[KeyStore, AuditTrail]:
        if self._keys is None or self._audit is None:
            with self._lock:
                if self._keys is None or self._audit is None:
                    self._engine = open_engine(self._url)
                    self._audit = AuditTrail(self._engine)
                    self._keys = KeyStore(self._engine, self._secret_file, cache_s=self._cache_s)
        return self._keys, self._audit

    @property
    def keys(self) -> KeyStore:
        """The key store (opened on first use)."""
        return self._open()[0]

    @property
    def audit(self) -> AuditTrail:
        """The audit trail (opened on first use)."""
        return self._open()[1]

    def record(
        self,
        action: str,
        *,
        actor: str,
        outcome: str = "ok",
        target: str | None = None,
        detail: Mapping[str, DetailValue] | None = None,
    ) -> None:
        """Append to the audit trail; a failure to write is logged, never turned into a failed request."""
        try:
            self.audit.append(action, actor=actor, outcome=outcome, target=target, detail=detail)
        except Exception:
            logger.exception("audit append failed", extra={"action": action, "actor": actor})

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value, or :class:`AuthenticationFailed`."""
        if not self.enabled:
            return LOCAL
        if not authorization:
            raise AuthenticationFailed("an API key is required: send 'Authorization: Bearer <key>'", "missing")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed("use 'Authorization: Bearer <key>'", "malformed")
        if self._jwt is not None and looks_like_jwt(token):
            return self._jwt.principal(token)
        return principal_of(self.keys.authenticate(token))

    def refuse_locked_out(self, client: str | None) -> None:
        """Raise :class:`RateLimited` (429) while ``client`` is past ``failed_auth_per_minute`` refused credentials."""
        if self._failures is None or client is None:
            return
        retry = self._failures.retry_after(client)
        if retry is not None:
            raise RateLimited("client:failed_auth_per_minute", retry)

    def check_fast(
        self, method: str, path: str, authorization: str | None, *, client: str | None = None
    ) -> Principal | None:
        """The principal when it is known without I/O (public route, auth off, a cached valid key allowed the
        action); None when :meth:`check` must run (a database lookup, or a failure to audit). A client locked out
        for failed authentications is refused here (:class:`RateLimited`), before any credential is looked at."""
        action = route_action(method, path)
        if action is None:
            return None
        if required_role(action).name == "public":
            return ANONYMOUS
        if not self.enabled:
            return LOCAL
        self.refuse_locked_out(client)
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        if self._jwt is not None and looks_like_jwt(token.strip()):
            return self._jwt_fast(token.strip(), action)
        if self._keys is None:
            return None
        key = self._keys.cached(token.strip())
        if key is None or not allowed(key.role, action):
            return None
        return principal_of(key)

    def _jwt_fast(self, token: str, action: str) -> Principal | None:
        """A JWT is verified in memory (the JWKS is read once); a failure goes the slow way to be audited."""
        assert self._jwt is not None  # checked by the caller
        try:
            principal = self._jwt.principal(token)
        except AuthenticationFailed:
            return None
        return principal if allowed(principal.role, action) else None

    def check(self, method: str, path: str, authorization: str | None, *, client: str | None = None) -> Principal:
        """Authenticate and authorise one HTTP request to the route ``path`` (its template); failures audited."""
        action = route_action(method, path)
        if action is None:
            self.record(
                "denied",
                actor="unknown",
                outcome="denied",
                target=f"{method} {path}",
                detail={"reason": "route not in the authorisation table", "client": client},
            )
            raise PermissionDenied(f"{method} {path} is not in the authorisation table")
        if required_role(action).name == "public":
            return ANONYMOUS
        if self.enabled:
            self.refuse_locked_out(client)
        try:
            principal = self.authenticate(authorization)
        except AuthenticationFailed as exc:
            if self._failures is not None and client is not None and exc.reason != "missing":
                self._failures.fail(client)  # a credential was tried and refused (no credential is no guess)
            token = (authorization or "").partition(" ")[2].strip()
            self.record(
                "auth.failed",
                actor=f"key:{key_prefix(token)}" if key_prefix(token) else "unknown",
                outcome=exc.reason,
                target=f"{method} {path}",
                detail={"client": client},
            )
            raise
        if not allowed(principal.role, action):
            self.record(
                "denied",
                actor=principal.name,
                outcome="denied",
                target=f"{method} {path}",
                detail={"action": action, "role": principal.role, "client": client},
            )
            raise PermissionDenied(f"role {principal.role!r} may not {action} (needs {required_role(action).name})")
        return principal

    def ensure_admin_key(self, *, actor: str) -> Path | None:
        """Create an admin key at ``<home>/secrets/admin.key`` unless one was written before; returns the path
        when created now."""
        path = self._settings.security.admin_key_file(self._home)
        if path.exists():
            return None
        issued = self.keys.create(role="admin", name="admin", created_by=actor)
        write_private(path, issued.secret + "\n")
        self.record("keys.create", actor=actor, target=issued.key.prefix, detail={"role": "admin", "name": "admin"})
        logger.info("admin key created", extra={"prefix": issued.key.prefix, "path": str(path)})
        return path

    def close(self) -> None:
        """Release the database connections."""
        if self._engine is not None:
            self._engine.dispose()


def record_action(
    settings: RagSettings,
    action: str,
    *,
    actor: str,
    outcome: str = "ok",
    target: str | None = None,
    detail: Mapping[str, DetailValue] | None = None,
) -> None:
    """Audit one action of a command or a flow (promotion, rollback, ...) with a gate opened for it."""
    gate = Gate(settings)
    try:
        gate.record(action, actor=actor, outcome=outcome, target=target, detail=detail)
    finally:
        gate.close()
