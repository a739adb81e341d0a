"""Schema migrations run from code: an existing database is upgraded in place on open.

The Alembic :class:`~alembic.config.Config` is built here, with ``script_location`` pointing
at ``annotate/migrations`` next to this file, so it works from any working directory and in
an installed copy; no ``alembic.ini`` is needed. The schema version is Alembic's own
``alembic_version`` table.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from .engine import is_transient, retry, writer
from .errors import AnnotateError

__all__ = ["MIGRATIONS_DIR", "alembic_config", "upgrade", "current_revision", "head_revision"]

#: The Alembic script folder shipped inside the package.
MIGRATIONS_DIR: Path = Path(__file__).resolve().parent / "migrations"


def alembic_config() -> Config:
    """An Alembic config for the store's migrations, built in code (no ini file)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run ``alembic upgrade revision`` on ``engine``'s database; a no-op when already there.

    The migrations run inside one write transaction (``BEGIN IMMEDIATE`` on SQLite, the store's
    advisory lock on PostgreSQL; DDL is transactional on both): two processes opening a new
    database at once migrate it one after the other, and the second finds it already at head.

    Raises :class:`AnnotateError` for a database written by a newer version of the tool (a
    revision this copy does not ship) and for a file that is not a database.
    """
    config = alembic_config()

    def run() -> None:
        with writer(engine).begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

    where = engine.url.render_as_string(hide_password=True)
    try:
        retry(run)
    except CommandError as exc:
        raise AnnotateError(
            f"the annotation database {where} has a schema this version does not know ({exc}); "
            "it was probably written by a newer version of the tool: update the app, do not downgrade the data"
        ) from exc
    except DBAPIError as exc:
        if is_transient(exc):
            raise
        raise AnnotateError(f"cannot open the annotation database {where}: {exc.orig}") from exc


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
