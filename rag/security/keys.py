"""API keys: issued once, stored only as a keyed hash, looked up by a short public prefix.

A key reads ``rgo_<prefix>_<secret>``: the prefix (8 hex characters) names the row and appears in listings and the
audit trail; the secret is 32 random bytes. Keys are high-entropy, so a keyed SHA-256 (HMAC with a server secret
kept outside the database) is the right hash: it costs microseconds per request, and a stolen table alone cannot
be used to check guesses. A slow password KDF would only add latency here.

Lookups are cached in memory for ``key_cache_s`` seconds so that a request pays a dictionary lookup and one HMAC;
expiry is checked on every use, and a revocation made by this process drops the cached entry at once (one made by
another process bites within ``key_cache_s``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from rag.security.authz import Role
from rag.security.db import api_keys, read_or_create_secret
from rag.security.errors import AuthenticationFailed, UnknownKey

if TYPE_CHECKING:
    from pathlib import Path

    from sqlalchemy import Engine, RowMapping

KEY_PREFIX = "rgo"
_KEY_RE = re.compile(r"^rgo_([0-9a-f]{8})_([A-Za-z0-9_-]{20,128})$")
_DAY_S = 86400.0


@dataclass(frozen=True)
class ApiKey:
    """A stored key (never its secret)."""

    prefix: str
    name: str
    role: str
    tenant: str | None
    groups: tuple[str, ...]
    created_at: float
    created_by: str
    expires_at: float | None
    revoked_at: float | None

    def state(self, now: float | None = None) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and (now if now is not None else time.time()) >= self.expires_at:
            return "expired"
        return "active"

    def to_json(self) -> dict[str, str | float | list[str] | None]:
        """The listing shape (``--json``)."""
        return {
            "prefix": self.prefix,
            "name": self.name,
            "role": self.role,
            "tenant": self.tenant,
            "groups": list(self.groups),
            "created_at": self.created_at,
            "created_by": self.created_by,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "state": self.state(),
        }


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: ``secret`` is the whole key, shown once and never stored."""

    key: ApiKey
    secret: str


def key_prefix(token: str) -> str | None:
    """The public prefix of a well-formed key, else None (safe to log: it is not the secret)."""
    match = _KEY_RE.match(token)
    return match.group(1) if match else None


class KeyStore:
    """Create, list, revoke and check API keys in the security database."""

    def __init__(self, engine: Engine, secret_file: Path, *, cache_s: float = 5.0) -> None:
        self._engine = engine
        self._secret_file = secret_file
        self._secret: bytes | None = None
        self._cache_s = cache_s
        self._cache: dict[str, tuple[ApiKey, str, float]] = {}
        self._lock = threading.Lock()

    def _digest(self, token: str) -> str:
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    self._secret = read_or_create_secret(self._secret_file)
        return hmac.new(self._secret, token.encode("utf-8"), hashlib.sha256).hexdigest()

    def create(
        self,
        *,
        role: str,
        name: str | None = None,
        tenant: str | None = None,
        groups: tuple[str, ...] = (),
        expires_days: float | None = None,
        created_by: str = "unknown",
        now: float | None = None,
    ) -> IssuedKey:
        """A new key of ``role`` (``ValueError`` for an unknown role or a non-positive expiry)."""
        Role.parse(role)
        if expires_days is not None and expires_days <= 0:
            raise ValueError(f"--expires must be a positive number of days, not {expires_days}")
        created = time.time() if now is None else now
        for _ in range(5):  # 32-bit prefixes: a collision is rare, and retried
            prefix = secrets.token_hex(4)
            token = f"{KEY_PREFIX}_{prefix}_{secrets.token_urlsafe(32)}"
            key = ApiKey(
                prefix=prefix,
                name=name or f"key-{prefix}",
                role=role,
                tenant=tenant,
                groups=tuple(groups),
                created_at=created,
                created_by=created_by,
                expires_at=created + expires_days * _DAY_S if expires_days is not None else None,
                revoked_at=None,
            )
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        insert(api_keys).values(
                            prefix=key.prefix,
                            digest=self._digest(token),
                            name=key.name,
                            role=key.role,
                            tenant=key.tenant,
                            groups=",".join(key.groups),
                            created_at=key.created_at,
                            created_by=key.created_by,
                            expires_at=key.expires_at,
                            revoked_at=None,
                        )
                    )
            except IntegrityError:
                continue
            return IssuedKey(key=key, secret=token)
        raise RuntimeError("could not find a free key prefix in 5 tries")

    def list(self) -> list[ApiKey]:
        """Every key, oldest first (revoked and expired ones included, marked by :meth:`ApiKey.state`)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
        return [_row_key(row) for row in rows]

    def revoke(self, prefix: str, *, now: float | None = None) -> ApiKey:
        """Revoke the key ``prefix`` (idempotent: a revoked key keeps its first revocation time)."""
        prefix = prefix.removeprefix(f"{KEY_PREFIX}_").split("_", 1)[0]
        with self._engine.begin() as conn:
            conn.execute(
                update(api_keys)
                .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=time.time() if now is None else now)
            )
            row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).mappings().first()
        self._cache.pop(prefix, None)
        if row is None:
            raise UnknownKey(f"no API key has the prefix {prefix!r} (see `ragops keys list`)")
        return _row_key(row)

    def authenticate(self, token: str, *, now: float | None = None) -> ApiKey:
        """The active key ``token`` is, or :class:`AuthenticationFailed` (malformed, unknown, expired, revoked)."""
        match = _KEY_RE.match(token)
        if match is None:
            raise AuthenticationFailed("the API key is malformed", "malformed")
        prefix = match.group(1)
        clock = time.monotonic()
        cached = self._cache.get(prefix)
        if cached is None or clock - cached[2] > self._cache_s:
            cached = self._load(prefix, clock)
        key, digest, _ = cached
        if not hmac.compare_digest(digest, self._digest(token)):
            raise AuthenticationFailed("the API key is not valid", "unknown")
        state = key.state(now)
        if state != "active":
            raise AuthenticationFailed(f"the API key is {state}", state)
        return key

    def cached(self, token: str) -> ApiKey | None:
        """The active key ``token`` is when its row is fresh in the cache; None when :meth:`authenticate` must
        decide (not cached, stale, or not valid: the slow path audits failures)."""
        match = _KEY_RE.match(token)
        if match is None:
            return None
        cached = self._cache.get(match.group(1))
        if cached is None or time.monotonic() - cached[2] > self._cache_s:
            return None
        key, digest, _ = cached
        if not hmac.compare_digest(digest, self._digest(token)) or key.state() != "active":
            return None
        return key

    def _load(self, prefix: str, clock: float) -> tuple[ApiKey, str, float]:
        with self._engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.prefix == prefix)).mappings().first()
        if row is None:
            raise AuthenticationFailed("the API key is not valid", "unknown")
        entry = (_row_key(row), str(row["digest"]), clock)
        self._cache[prefix] = entry
        return entry


def _row_key(row: RowMapping) -> ApiKey:
    groups = str(row["groups"] or "")
    return ApiKey(
        prefix=str(row["prefix"]),
        name=str(row["name"]),
        role=str(row["role"]),
        tenant=row["tenant"],
        groups=tuple(g for g in groups.split(",") if g),
        created_at=float(row["created_at"]),
        created_by=str(row["created_by"]),
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
    )
