"""Alembic's environment for the request store: runs on the connection :func:`rag.store.migrate.upgrade` passes.

At run time there is no alembic.ini: the store builds the :class:`alembic.config.Config` in code and hands over an
open connection in ``config.attributes["connection"]``. A developer generating a new revision can instead set
``sqlalchemy.url`` on the Config (see :func:`rag.store.migrate.alembic_config`).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from rag.store.tables import METADATA, VERSION_TABLE


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table instead
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    given = context.config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("the request store's migrations need a connection or sqlalchemy.url")
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


_main()
