"""Bring a request store database to the newest schema, programmatically, with no alembic.ini.

The migrations ship inside the package (``rag/store/migrations``), so an installed wheel can create and upgrade its
own database at start-up. Several service workers may start at once against one database: each runs the upgrade,
and one that loses the race to create a table simply tries again (it then finds the version recorded and has
nothing to do).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from rag.errors import StoreError
from rag.store.tables import VERSION_TABLE

if TYPE_CHECKING:
    from alembic.config import Config

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_ATTEMPTS = 5


def alembic_config(url: str | None = None) -> Config:
    """An Alembic ``Config`` for the store's migrations (``url`` only for developer commands like ``revision``)."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


def head_revision() -> str:
    """The newest schema revision this release knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:  # pragma: no cover - the package always ships at least one revision
        raise StoreError(f"no migrations found in {MIGRATIONS}")
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine) -> str:
    """Migrate the database behind ``engine`` to the head revision and return it.

    Raises:
        StoreError: The database has a revision this release does not know (written by a newer ragops), or it
            cannot be migrated.
    """
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config()
    known = {script.revision for script in ScriptDirectory.from_config(config).walk_revisions()}
    found = current_revision(engine)
    if found is not None and found not in known:
        raise StoreError(
            f"the request store at {engine.url.render_as_string(hide_password=True)} has schema revision {found}, "
            "which this release does not know (written by a newer ragops?); upgrade ragops or point "
            "RAGOPS_STORE__URL elsewhere"
        )
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
            break
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            # Another worker created the table (or recorded the version) between our check and our CREATE, or holds
            # the write lock.
            if attempt == _ATTEMPTS:
                raise StoreError(f"cannot migrate the request store: {exc.orig}") from exc
            logger.info("request store migration raced another process (attempt %d): %s", attempt, exc.orig)
            time.sleep(0.1 * attempt)
    head = head_revision()
    if "requests" not in inspect(engine).get_table_names():  # pragma: no cover - guards a broken migration chain
        raise StoreError("the request store's migrations ran but created no requests table")
    return head
