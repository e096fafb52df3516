"""Settings (secret policy, defaults) and accounts (argon2 passwords, hashed API tokens)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from pixmo.auth import authenticate, create_token, create_user, user_for_token
from pixmo.config import Settings
from pixmo.db.models import ApiToken, User
from pixmo.errors import ConfigError, ValidationError


def test_defaults_are_embedded(monkeypatch):
    monkeypatch.delenv("PIXMO_DATA_DIR")
    s = Settings()
    assert s.resolved_database_url == "sqlite:///pixmo-data/pixmo.db"
    assert s.resolved_storage_url == "file://pixmo-data/blobs"


def test_env_prefix(monkeypatch):
    monkeypatch.setenv("PIXMO_DATABASE_URL", "postgresql+psycopg://u@h/db")
    monkeypatch.setenv("PIXMO_STORAGE_URL", "s3://bucket/prefix")
    s = Settings()
    assert s.resolved_database_url == "postgresql+psycopg://u@h/db"
    assert s.resolved_storage_url == "s3://bucket/prefix"


@pytest.mark.parametrize("secret", [None, "change-me", "short"])
def test_missing_or_default_secret_refused_outside_dev(monkeypatch, secret):
    monkeypatch.setenv("PIXMO_ENV", "prod")
    if secret:
        monkeypatch.setenv("PIXMO_SECRET_KEY", secret)
    with pytest.raises(ConfigError, match="PIXMO_SECRET_KEY"):
        Settings().require_secret()


def test_dev_allows_default_secret_and_prod_takes_a_real_one(monkeypatch):
    monkeypatch.setenv("PIXMO_ENV", "dev")
    assert Settings().require_secret()
    monkeypatch.setenv("PIXMO_ENV", "prod")
    monkeypatch.setenv("PIXMO_SECRET_KEY", "x" * 32)
    assert Settings().require_secret() == "x" * 32


def test_passwords_are_argon2_and_verified(db):
    with db.session() as s:
        user = create_user(s, "bob", "a-long-password", "annotator")
        assert user.password_hash.startswith("$argon2")
    with db.session() as s:
        assert authenticate(s, "bob", "a-long-password").username == "bob"
        assert authenticate(s, "bob", "wrong-password") is None
        assert authenticate(s, "nobody", "a-long-password") is None


def test_bad_users_refused(db):
    with db.session() as s:
        with pytest.raises(ValidationError, match="role"):
            create_user(s, "x", "a-long-password", "god")
        with pytest.raises(ValidationError, match="8 characters"):
            create_user(s, "x", "short", "annotator")
        with pytest.raises(ValidationError, match="username"):
            create_user(s, "<script>", "a-long-password", "annotator")


def test_tokens_are_stored_hashed(db):
    with db.session() as s:
        user = create_user(s, "carol", "a-long-password", "admin")
        token = create_token(s, user)
    with db.session() as s:
        stored = s.scalars(select(ApiToken)).one()
        assert token not in stored.token_hash and len(stored.token_hash) == 64
        assert user_for_token(s, token).username == "carol"
        assert user_for_token(s, token + "x") is None


def test_parallel_wrong_passwords_get_only_the_allowed_tries(db):
    """16 wrong passwords for one user from one address at once: 5 are checked, the rest throttled, on
    PostgreSQL too (where the tries used to count the failures in parallel, before any was written)."""
    import threading

    from pixmo.logins import MAX_FAILURES_PER_USER_IP, LoginThrottled, check_credentials

    with db.session() as s:
        create_user(s, "victim", "correct horse battery", "annotator")
    barrier = threading.Barrier(16)
    outcomes, errors = [], []

    def guess() -> None:
        try:
            barrier.wait()
            with db.session(write_lock=True) as s:
                outcomes.append(check_credentials(s, "victim", "wrong-guess", "6.6.6.6"))
        except LoginThrottled:
            outcomes.append("throttled")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guess) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert outcomes.count(None) == MAX_FAILURES_PER_USER_IP
    assert outcomes.count("throttled") == 16 - MAX_FAILURES_PER_USER_IP


def test_a_hash_with_weaker_parameters_is_upgraded_at_the_next_login(db):
    from argon2 import PasswordHasher

    from pixmo.auth import _hasher

    with db.session() as s:
        user = create_user(s, "old-timer", None, "annotator")
        user.password_hash = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("s3cret-enough")
        old = user.password_hash
    with db.session() as s:
        assert authenticate(s, "old-timer", "wrong") is None
        assert s.scalar(select(User.password_hash).where(User.username == "old-timer")) == old  # not on a failure
        assert authenticate(s, "old-timer", "s3cret-enough") is not None
    with db.session() as s:
        new = s.scalar(select(User.password_hash).where(User.username == "old-timer"))
    assert new != old and not _hasher.check_needs_rehash(new)
    with db.session() as s:
        assert authenticate(s, "old-timer", "s3cret-enough") is not None


def test_two_admins_creating_one_name_at_once_get_a_clear_error(db):
    """The name check runs before the insert: the second of two simultaneous creates used to fail
    with the database's IntegrityError (a 500 in the app) instead of 'exists already'."""
    import threading

    from pixmo.projects import create_project

    for create, what in ((lambda s: create_user(s, "dup", None, "annotator"), "user 'dup' exists already"),
                         (lambda s: create_project(s, "dup", "caption"), "project 'dup' exists already")):
        checked, outcome = threading.Event(), []

        def second():
            try:
                with db.session(write_lock=True) as s:  # as the app does (SQLite: wait for the writer)
                    checked.set()  # on PostgreSQL its check sees nothing: the first create is not committed yet
                    create(s)
                outcome.append("created")
            except ValidationError as exc:
                outcome.append(str(exc))
            except Exception as exc:  # noqa: BLE001 - the test names it
                outcome.append(repr(exc))

        with db.session(write_lock=True) as s:
            create(s)
            thread = threading.Thread(target=second)
            thread.start()
            checked.wait(10)
            thread.join(0.5)  # it checks, then waits on the first one's row (or SQLite's lock)
        thread.join(30)
        assert outcome == [what], outcome
