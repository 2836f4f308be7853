"""Settings of authentication and the audit trail (``RAGOPS_SECURITY__*``, assembled into the main settings).

Auth is on by default: a service reachable by anyone must not answer anyone. The server secret that keys the API
key hashes lives in a file under ``<home>/secrets`` (mode 0600), never in a stack or the environment dump; the
keys and the audit trail share one database, SQLite under ``home`` unless ``db_url`` names another (PostgreSQL).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator

DB_NAME = "security.db"
SECRETS_DIR = "secrets"


class SecuritySettings(BaseModel):
    """API keys, roles and the audit trail."""

    auth: bool = Field(
        default=True,
        description="Require a bearer credential on every non-public route. Off only on loopback (refused otherwise).",
    )
    db_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the key and audit tables (e.g. postgresql+psycopg://user@host/ragops); "
        "unset means SQLite at <home>/security.db.",
    )
    secret_file: Path | None = Field(
        default=None,
        description="File holding the server secret that keys the API key hashes; unset means "
        "<home>/secrets/server.secret (created with mode 0600 on first use).",
    )
    audit_queries: bool = Field(
        default=False, description="Also audit every answered query (principal and cited document ids)."
    )
    failed_auth_per_minute: int | None = Field(
        default=20,
        ge=1,
        description="Refused credentials per client address per minute (per worker); past it every credential from "
        "that address is answered 429 with Retry-After until the window has room. Unset: no limit.",
    )
    key_cache_s: float = Field(
        default=5.0,
        ge=0,
        description="How long a looked-up key is trusted from memory (revocation elsewhere takes this long to bite).",
    )
    jwks: Path | None = Field(
        default=None,
        description="A JWKS file: bearer JWTs signed by one of its keys are accepted too (SSO in front of ragops).",
    )
    jwt_audience: str | None = Field(default=None, description="Required `aud` of accepted JWTs (unset: not checked).")
    jwt_issuer: str | None = Field(default=None, description="Required `iss` of accepted JWTs (unset: not checked).")
    jwt_role_claim: str = Field(default="role", description="Claim holding reader, operator or admin.")
    jwt_tenant_claim: str = Field(default="tenant", description="Claim holding the tenant.")
    jwt_groups_claim: str = Field(default="groups", description="Claim holding the access groups (a list).")
    jwt_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "PS256", "EdDSA"],
        description="Accepted signature algorithms (never 'none' or HMAC: the JWKS holds public keys).",
    )

    @field_validator("db_url")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"not a database URL (expected e.g. sqlite:///path or postgresql://...): {value!r}")
        return value

    def resolve_db_url(self, home: Path) -> str:
        """``db_url``, or SQLite at ``<home>/security.db``."""
        return self.db_url or f"sqlite:///{home / DB_NAME}"

    def resolve_secret_file(self, home: Path) -> Path:
        """``secret_file``, or ``<home>/secrets/server.secret``."""
        return self.secret_file or home / SECRETS_DIR / "server.secret"

    @staticmethod
    def admin_key_file(home: Path) -> Path:
        """Where ``ragops up`` writes the admin key it creates on the first start."""
        return home / SECRETS_DIR / "admin.key"
