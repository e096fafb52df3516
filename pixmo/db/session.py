"""Engines and sessions: SQLite (embedded default, WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _prepare_sqlite(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def create_db_engine(url: str, *, sqlite_begin: str = "DEFERRED", echo: bool = False) -> Engine:
    """An engine for ``url``; on SQLite: WAL, foreign keys, a busy timeout and explicit BEGINs.

    ``sqlite_begin="IMMEDIATE"`` takes the write lock at the start of each transaction, which is
    how read-then-write sections (leasing work) stay correct under concurrency on SQLite.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, echo=echo, pool_pre_ping=True, future=True)

    _prepare_sqlite(url)
    engine = create_engine(url, echo=echo, connect_args={"timeout": 60, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy own transaction boundaries (pysqlite's implicit BEGIN is unreliable).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql(f"BEGIN {sqlite_begin}")

    return engine


class Database:
    """An engine plus a session factory for one database URL."""

    def __init__(self, url: str, *, echo: bool = False):
        self.url = url
        self.engine = create_db_engine(url, echo=echo)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @cached_property
    def write_engine(self) -> Engine:
        """Engine for read-then-write sections: BEGIN IMMEDIATE on SQLite, the same engine elsewhere."""
        if not self.is_sqlite:
            return self.engine
        return create_db_engine(self.url, sqlite_begin="IMMEDIATE")

    @contextmanager
    def session(self, *, write_lock: bool = False) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error."""
        bind = self.write_engine if write_lock else self.engine
        with Session(bind, expire_on_commit=False) as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
        if "write_engine" in self.__dict__ and self.write_engine is not self.engine:
            self.write_engine.dispose()


_databases: dict[str, Database] = {}


def get_database(url: str | None = None) -> Database:
    """The process-wide Database for ``url`` (default: the settings' database URL)."""
    if url is None:
        from pixmo.config import get_settings

        url = get_settings().resolved_database_url
    if url not in _databases:
        _databases[url] = Database(url)
    return _databases[url]
