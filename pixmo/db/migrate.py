"""Alembic migrations, driven from Python (``pixmo init`` upgrades to head)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that needs no alembic.ini on disk."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "heads") -> None:
    """Bring the database at ``url`` to ``revision`` (default: every head, the newest schema)."""
    from pixmo.db.session import _prepare_sqlite

    if url.startswith("sqlite"):
        _prepare_sqlite(url)
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            heads = sorted(MigrationContext.configure(conn).get_current_heads())
            return ",".join(heads) or None
    finally:
        engine.dispose()


def head_revision() -> str | None:
    """The newest revision (several heads joined by ',' while branches await a merge)."""
    from alembic.script import ScriptDirectory

    heads = sorted(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())
    return ",".join(heads) or None
