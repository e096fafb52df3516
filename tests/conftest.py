"""Shared fixtures: a migrated database per test (SQLite always, PostgreSQL when
PIXMO_TEST_POSTGRES_URL is set), a local blob store, and settings pointed at a temp folder."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from pixmo.config import get_settings
from pixmo.db.migrate import upgrade
from pixmo.db.session import Database
from pixmo.storage import LocalStore

PG_URL = os.environ.get("PIXMO_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(autouse=True)
def _settings(tmp_path, monkeypatch):
    """Every test gets its own data dir and the test environment (default secret allowed)."""
    for key in list(os.environ):
        if key.startswith("PIXMO_") and key != "PIXMO_TEST_POSTGRES_URL":
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIXMO_ENV", "test")
    monkeypatch.setenv("PIXMO_DATA_DIR", str(tmp_path / "pixmo-data"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> Path:
    """A migrated SQLite file, copied for each test (migrating once is faster)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


def _sqlite_db(tmp_path: Path, template: Path) -> Database:
    path = tmp_path / "test.db"
    shutil.copy(template, path)
    return Database(f"sqlite:///{path}")


def _postgres_db() -> tuple[Database, str]:
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    upgrade(url)
    return Database(url), schema


def _drop_schema(schema: str) -> None:
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db(request, tmp_path, sqlite_template) -> Database:
    """A migrated, empty database: parametrized over SQLite and PostgreSQL."""
    if request.param == "sqlite":
        database = _sqlite_db(tmp_path, sqlite_template)
        yield database
        database.dispose()
        return
    if not PG_URL:
        pytest.skip("PostgreSQL: set PIXMO_TEST_POSTGRES_URL (make test does when it answers)")
    database, schema = _postgres_db()
    yield database
    database.dispose()
    _drop_schema(schema)


@pytest.fixture
def sqlite_db(tmp_path, sqlite_template) -> Database:
    """A migrated, empty SQLite database (for tests whose subject is not the database)."""
    database = _sqlite_db(tmp_path, sqlite_template)
    yield database
    database.dispose()


@pytest.fixture
def store(tmp_path) -> LocalStore:
    return LocalStore(tmp_path / "blobs", secret="test-secret-for-signing", public_url="http://testserver")


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole test session (2 CPUs, no dashboard); a running one is reused."""
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
