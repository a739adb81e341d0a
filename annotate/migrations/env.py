"""Alembic environment of the annotation store.

Used programmatically by :func:`annotate.migrate.upgrade`, which passes an open connection
in ``config.attributes["connection"]`` (already inside a write transaction, so concurrent
openers of a new database run the migrations one after the other, on SQLite and on
PostgreSQL). From the command line, ``alembic -x url=sqlite:///fer_annotations.db upgrade
head`` (or ``-x url=postgresql+psycopg://user:password@host/database``) with a config whose
``script_location`` is this folder works too; without ``-x url`` the default database
(:func:`annotate.engine.default_db_url`) is used.
"""

from __future__ import annotations

from alembic import context

from annotate.engine import create_store_engine, default_db_url, writer
from annotate.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection) -> None:
    # render_as_batch: ALTER TABLE on SQLite needs "move and copy"; harmless elsewhere.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = (context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
           or default_db_url())
    engine = create_store_engine(url)
    try:
        with writer(engine).begin() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


def run_migrations_offline() -> None:
    url = (context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
           or default_db_url())
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
