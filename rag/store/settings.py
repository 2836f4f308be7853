"""Where the request store lives and how long it keeps records, readable on its own.

The fields are :class:`rag.settings.StoreSettings` (the ``store`` group of the platform's ``Settings``:
``RAGOPS_STORE__URL``, ``RAGOPS_STORE__RETENTION_DAYS``, ``RAGOPS_STORE__QUEUE_SIZE``); this class reads the same
variables by itself, so a tool or a test can build it without the rest of the settings.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.settings import STORE_DB_NAME as DB_NAME
from rag.settings import StoreSettings as StoreFields

__all__ = ["DB_NAME", "StoreSettings"]


class StoreSettings(BaseSettings, StoreFields):
    """The ``store`` settings group, read from the environment directly."""

    model_config = SettingsConfigDict(
        env_prefix="RAGOPS_STORE__", env_nested_delimiter="__", env_ignore_empty=True, extra="ignore"
    )
