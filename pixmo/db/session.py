"""Engines and sessions: SQLite (embedded default, WAL) and PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


SQLITE_BUSY_TIMEOUT_S = 60  # how long a SQLite connection waits for another writer's lock


def _prepare_sqlite(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)


UNICODE_LOWER = "unicode_lower"  # an SQL function on SQLite connections: Python's str.lower


def _unicode_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def create_db_engine(url: str, *, sqlite_begin: str = "DEFERRED", echo: bool = False) -> Engine:
    """An engine for ``url``; on SQLite: WAL, foreign keys, a busy timeout and explicit BEGINs.

    ``sqlite_begin="IMMEDIATE"`` takes the write lock at the start of each transaction, which is
    how read-then-write sections (leasing work) stay correct under concurrency on SQLite.
    """
    if not url.startswith("sqlite"):
        return create_engine(url, echo=echo, pool_pre_ping=True, future=True)

    _prepare_sqlite(url)
    engine = create_engine(url, echo=echo, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # noqa: ANN001
        # Let SQLAlchemy own transaction boundaries (pysqlite's implicit BEGIN is unreliable).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()
        # SQLite's lower() folds only A-Z: text search calls this one, which folds as PostgreSQL's does
        dbapi_conn.create_function(UNICODE_LOWER, 1, _unicode_lower, deterministic=True)

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # noqa: ANN001
        conn.exec_driver_sql(f"BEGIN {sqlite_begin}")

    return engine


def _sqlite_file(url: str) -> str | None:
    """The file a SQLite URL opens (links resolved), or None for a private in-memory database."""
    u = make_url(url)
    database = u.database or ""
    if database.startswith("file:"):  # a URI filename (?uri=true): file:/path?mode=ro
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(database)
        if parse_qs(parts.query).get("mode") == ["memory"]:
            return None
        database = unquote(parts.path)
    if not database or database == ":memory:":
        return None
    return os.path.realpath(Path(database).expanduser())


@contextmanager
def _file_lock(database: str | None, name: str, shared: bool = False) -> Iterator[bool]:
    if database is None:  # nobody else can open it
        yield True
        return
    import fcntl
    import re

    lock = f"{database}.{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(lock, os.O_RDONLY)  # made by another user: flock needs no write access
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock; the empty file stays for the next holder


class NamedLock:
    """What `Database.try_lock` yields: true when the lock was got. ``still_held()`` says whether it
    still is (false once a PostgreSQL lock's connection has been cut, which frees the lock)."""

    def __init__(self, held: bool, alive: Callable[[], bool] | None = None) -> None:
        self.held, self._alive = held, alive

    def __bool__(self) -> bool:
        return self.held

    def still_held(self) -> bool:
        return self.held and (self._alive is None or self._alive())


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

    def wait_for_writers(self, timeout: float = 60.0) -> bool:
        """Wait until the write transactions in flight now have ended; whether they all did within ``timeout``.

        Rows get their ``created_at`` when written but are seen by others only at commit: a reader that
        cuts at "now" waits for these first, or it misses rows stamped before the cut (and a filter
        decided before they commit disagrees with the rows read after). SQLite: its one write lock,
        taken and released. PostgreSQL: polled until the oldest running transaction is younger than
        the cut.
        """
        if self.is_sqlite:
            return self._wait_for_sqlite_writer(timeout)
        from sqlalchemy import text

        deadline = time.monotonic() + timeout
        with self.engine.connect() as conn:
            # every transaction id below this one was handed out before now; the oldest one still
            # running is the snapshot's xmin, so all of them have ended once xmin has passed it
            cut = str(conn.execute(text("SELECT pg_current_xact_id()")).scalar_one())
            conn.rollback()
            done = text("SELECT pg_snapshot_xmin(pg_current_snapshot()) >= CAST(:cut AS xid8)")
            while not conn.execute(done, {"cut": cut}).scalar_one():
                conn.rollback()
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.02)
            conn.rollback()
        return True

    def _wait_for_sqlite_writer(self, timeout: float) -> bool:
        import sqlite3

        raw = self.engine.raw_connection()
        try:
            con = raw.driver_connection
            con.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            try:
                con.execute("BEGIN IMMEDIATE")  # waits for the writer, if any
                con.execute("ROLLBACK")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                return False
            finally:
                con.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        finally:
            raw.close()
        return True

    @contextmanager
    def try_lock(self, name: str, *, shared: bool = False) -> Iterator[NamedLock]:
        """Hold a named lock, shared by every process using this database, while the block runs;
        yields a `NamedLock`, false (holding nothing) when another holder has it now. ``shared``
        holders do not exclude each other, only the exclusive one.

        PostgreSQL: a session advisory lock on a connection of its own (the server frees it if this
        process dies, and also if that connection is cut: `NamedLock.still_held` tells). SQLite:
        flock on a file beside the database (the kernel frees it likewise); a private in-memory
        database has no other users, so the lock is always got.
        """
        if self.is_sqlite:
            with _file_lock(_sqlite_file(self.url), name, shared) as held:
                yield NamedLock(held)
            return
        from sqlalchemy import text
        from sqlalchemy.exc import DBAPIError

        # the schema is part of the key: deployments (and test runs) in other schemas of the same
        # database do not block each other
        key = "hashtextextended(current_schema() || '|pixmo|' || :name, 0)"
        kind = "_shared" if shared else ""
        with self.engine.connect() as conn:
            held = bool(conn.execute(text(f"SELECT pg_try_advisory_lock{kind}({key})"), {"name": name}).scalar())
            conn.commit()
            lost = False

            def alive() -> bool:
                nonlocal lost
                if not lost:
                    try:
                        conn.execute(text("SELECT 1"))
                        conn.commit()
                    except DBAPIError:
                        lost = True  # and the lock with it, server-side
                        conn.invalidate()
                return not lost

            try:
                yield NamedLock(held, alive)
            finally:
                if held and not lost:
                    try:
                        conn.execute(text(f"SELECT pg_advisory_unlock{kind}({key})"), {"name": name})
                        conn.commit()
                    except DBAPIError:
                        # the connection was lost (and the lock with it, server-side): the block's
                        # own outcome stands; the connection is not put back in the pool
                        conn.invalidate()

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
