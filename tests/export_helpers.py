"""Fixtures for the export tests: a demo database built once per session, copied for each test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pixmo.db.migrate import upgrade
from pixmo.db.session import Database
from pixmo.demo import create_demo
from pixmo.storage import LocalStore

DEMO_IMAGES = 12
SECRET = "test-secret-for-signing"


def make_store(root: Path) -> LocalStore:
    return LocalStore(root, secret=SECRET, public_url="http://testserver")


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory) -> Path:
    """A folder with ``pixmo.db`` (SQLite) and ``blobs/`` holding the demo (no speech: fast).

    Each test module that imports this fixture gets its own instance, so the folder is kept at a
    fixed place under the session's base temp dir and built only once.
    """
    root = tmp_path_factory.getbasetemp() / "export-demo"
    if (root / "ready").exists():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    url = f"sqlite:///{root / 'pixmo.db'}"
    upgrade(url)
    database = Database(url)
    create_demo(database, make_store(root / "blobs"), DEMO_IMAGES, seed=0, speech=False)
    database.dispose()  # the last connection checkpoints the WAL into pixmo.db
    (root / "ready").touch()
    return root


@pytest.fixture
def demo(tmp_path, demo_template) -> tuple[Database, LocalStore]:
    """A private copy of the demo database and blobs: (Database, LocalStore)."""
    root = tmp_path / "demo"
    shutil.copytree(demo_template, root, ignore=shutil.ignore_patterns("ready"))
    database = Database(f"sqlite:///{root / 'pixmo.db'}")
    yield database, make_store(root / "blobs")
    database.dispose()
