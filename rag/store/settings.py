"""Where the request store lives and how long it keeps records.

A nested group of :class:`pipelines.settings.Settings` once the lead assembles it (``RAGOPS_STORE__URL``,
``RAGOPS_STORE__RETENTION_DAYS``); on its own it reads the same variables, so it can be built standalone in tests
and tools. ``url`` unset means SQLite at ``<home>/requests.db``: the URL is resolved against ``home`` by
:meth:`StoreSettings.resolve_url` rather than stored, so it cannot drift from the home folder.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DB_NAME = "requests.db"


class StoreSettings(BaseSettings):
    """The request store: one record per answered (or refused) request, feedback joined later."""

    model_config = SettingsConfigDict(
        env_prefix="RAGOPS_STORE__", env_nested_delimiter="__", env_ignore_empty=True, extra="ignore"
    )

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the request store (e.g. postgresql+psycopg://user@host/ragops); unset means "
        "SQLite at <home>/requests.db.",
    )
    retention_days: float | None = Field(
        default=90.0,
        gt=0,
        description="Records older than this many days are purged (feedback included); unset keeps everything.",
    )
    queue_size: int = Field(
        default=10_000,
        ge=1,
        description="Records waiting for the background writer; beyond it new records are dropped (and counted) "
        "rather than stalling requests.",
    )

    @field_validator("url")
    @classmethod
    def _url_has_scheme(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            raise ValueError(f"not a database URL (expected e.g. sqlite:///path or postgresql://...): {value!r}")
        return value

    def resolve_url(self, home: Path) -> str:
        """The configured URL, or SQLite under ``home``."""
        return self.url or f"sqlite:///{Path(home).expanduser().resolve() / DB_NAME}"
