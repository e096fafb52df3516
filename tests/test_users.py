"""Account administration (pixmo.users): deactivation, roles, passwords and tokens, through the
library, the JSON API and the admin page, on SQLite and PostgreSQL."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from annotation_app.main import create_app
from pixmo.assignments import next_assignment
from pixmo.auth import create_token, user_for_token
from pixmo.config import Settings
from pixmo.db.models import ApiToken, Assignment, User, WebSession
from pixmo.errors import NotFoundError, ValidationError
from pixmo.logins import login, session_user
from pixmo.users import (
    activate_user,
    deactivate_user,
    list_tokens,
    revoke_tokens,
    set_password,
    set_role,
)
from tests.app_helpers import PASSWORD, add_users, make_project, tokens_for


@pytest.fixture
def team(db, store):
    add_users(db, [("ann", "annotator"), ("ann2", "annotator"), ("adm", "admin")])
    project, images = make_project(db, store, "caps", "caption", n_images=1, overlap=1)
    return {"db": db, "store": store, "project": project, "images": images}


def _ids(db, name: str) -> int:
    with db.session() as s:
        return s.scalar(select(User.id).where(User.username == name))


def test_deactivating_ends_sessions_revokes_tokens_and_frees_the_leased_image(team):
    db, project = team["db"], team["project"]
    ann = _ids(db, "ann")
    with db.session() as s:
        cookie = login(s, "ann", PASSWORD, "10.0.0.1").token
        token = create_token(s, s.get(User, ann), "script")
    lease = next_assignment(db, project, ann)
    # overlap 1: while ann holds the only image, nobody else gets it
    assert next_assignment(db, project, _ids(db, "ann2")) is None
    with db.session(write_lock=True) as s:
        d = deactivate_user(s, "ann")
    assert (d.sessions_ended, d.tokens_revoked, d.leases_released) == (1, 1, 1)
    with db.session() as s:
        assert session_user(s, cookie) is None and user_for_token(s, token) is None
        assert login(s, "ann", PASSWORD, "10.0.0.1") is None
        assert s.get(Assignment, lease.assignment.id).status == "expired"
    other = next_assignment(db, project, _ids(db, "ann2"))
    assert other is not None and other.assignment.image_id == lease.assignment.image_id
    # back again: the password works, the old token and cookie do not
    with db.session(write_lock=True) as s:
        activate_user(s, "ann")
    with db.session() as s:
        assert user_for_token(s, token) is None and session_user(s, cookie) is None
        assert login(s, "ann", PASSWORD, "10.0.0.1") is not None


def test_the_last_active_admin_cannot_be_deactivated_or_demoted(team):
    db = team["db"]
    with db.session(write_lock=True) as s, pytest.raises(ValidationError, match="only active admin"):
        deactivate_user(s, "adm")
    with db.session(write_lock=True) as s, pytest.raises(ValidationError, match="only active admin"):
        set_role(s, "adm", "reviewer")
    with db.session() as s:
        adm = s.scalar(select(User).where(User.username == "adm"))
        assert adm.is_active and adm.role == "admin"  # nothing changed
    with db.session(write_lock=True) as s:
        set_role(s, "ann2", "admin")
    with db.session(write_lock=True) as s:
        deactivate_user(s, "adm")  # ann2 is an admin now
    with db.session(write_lock=True) as s, pytest.raises(ValidationError, match="only active admin"):
        set_role(s, "ann2", "annotator")
    with db.session(write_lock=True) as s, pytest.raises(ValidationError, match="role must be one of"):
        set_role(s, "ann", "owner")
    with db.session(write_lock=True) as s, pytest.raises(NotFoundError):
        deactivate_user(s, "nobody")


def test_a_new_password_ends_the_sessions_and_the_old_one_stops_working(team):
    db = team["db"]
    with db.session() as s:
        cookie = login(s, "ann", PASSWORD, "10.0.0.2").token
    with db.session(write_lock=True) as s:
        _, ended = set_password(s, "ann", "a-brand-new-secret")
    assert ended == 1
    with db.session() as s:
        assert session_user(s, cookie) is None
        assert login(s, "ann", PASSWORD, "10.0.0.2") is None
        assert login(s, "ann", "a-brand-new-secret", "10.0.0.2") is not None
    with db.session(write_lock=True) as s, pytest.raises(ValidationError, match="at least 8"):
        set_password(s, "ann", "short")
    # an empty password is a (too short) password, not "none": the account was made, unable to log in
    from pixmo.auth import create_user

    with db.session() as s, pytest.raises(ValidationError, match="at least 8"):
        create_user(s, "blank", "")


def test_a_login_in_flight_while_the_password_changes_keeps_no_session(team):
    """On PostgreSQL a login that had checked the old password but not yet committed its session
    was missed by the reset's ending of sessions: the leaked password's session stayed alive."""
    import threading

    db = team["db"]
    if db.is_sqlite:
        pytest.skip("SQLite runs the two one after the other (both take its write lock)")
    changed = threading.Event()

    def change() -> None:
        with db.session() as s:
            set_password(s, "ann", "a-brand-new-secret")
        changed.set()

    with db.session() as s:
        cookie = login(s, "ann", PASSWORD, "10.0.0.2").token  # checked and opened, not committed
        thread = threading.Thread(target=change)
        thread.start()
        assert not changed.wait(1.0)  # the change waits for the login's transaction
    thread.join(10)
    assert changed.is_set()
    with db.session() as s:
        assert session_user(s, cookie) is None
        assert login(s, "ann", PASSWORD, "10.0.0.2") is None


def test_tokens_are_listed_and_revoked_by_label(team):
    db = team["db"]
    with db.session() as s:
        ann = s.scalar(select(User).where(User.username == "ann"))
        keep, drop = create_token(s, ann, "laptop"), create_token(s, ann, "ci")
    with db.session() as s:
        assert [t.name for t in list_tokens(s, "ann")] == ["laptop", "ci"]
    with db.session(write_lock=True) as s:
        assert revoke_tokens(s, "ann", "ci") == 1
    with db.session() as s:
        assert user_for_token(s, drop) is None and user_for_token(s, keep).username == "ann"
    with db.session(write_lock=True) as s:
        assert revoke_tokens(s, "ann") == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == ann.id)) == 0


@pytest.fixture
def app_env(team, tmp_path):
    app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=team["db"], store=team["store"])
    tokens = tokens_for(team["db"], ["ann", "ann2", "adm"])
    clients = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    return {**team, "app": app, "c": clients}


def test_admin_api_changes_and_deactivates_users(app_env):
    db, admin, ann = app_env["db"], app_env["c"]["adm"], _ids(app_env["db"], "ann")
    assert app_env["c"]["ann"].get("/api/me").status_code == 200
    r = admin.patch(f"/api/users/{ann}", json={"role": "reviewer"})
    assert r.status_code == 200 and r.json()["role"] == "reviewer"
    r = admin.patch(f"/api/users/{ann}", json={"is_active": False})
    assert r.status_code == 200 and r.json()["is_active"] is False
    assert app_env["c"]["ann"].get("/api/me").status_code == 401  # the token died with the account
    assert admin.patch(f"/api/users/{ann}", json={"is_active": True}).json()["is_active"] is True
    assert app_env["c"]["ann"].get("/api/me").status_code == 401  # and stays revoked
    # bad input changes nothing
    adm = _ids(db, "adm")
    r = admin.patch(f"/api/users/{adm}", json={"is_active": False})
    assert r.status_code == 422 and "only active admin" in r.json()["detail"]
    assert admin.patch(f"/api/users/{ann}", json={"password": "short"}).status_code == 422
    assert admin.patch(f"/api/users/{ann}", json={"username": "renamed"}).status_code == 422
    assert admin.patch("/api/users/999", json={"role": "admin"}).status_code == 404
    assert app_env["c"]["ann2"].patch(f"/api/users/{ann}", json={"role": "admin"}).status_code == 403
    with db.session() as s:
        rows = {u.username: (u.role, u.is_active) for u in s.scalars(select(User))}
    assert rows == {"ann": ("reviewer", True), "ann2": ("annotator", True), "adm": ("admin", True)}
    r = admin.delete(f"/api/users/{_ids(db, 'ann2')}/tokens")
    assert r.json() == {"revoked": 1} and app_env["c"]["ann2"].get("/api/me").status_code == 401


def test_admin_page_buttons_deactivate_and_show_refusals(app_env):
    db = app_env["db"]
    client = TestClient(app_env["app"])
    assert client.post("/login", data={"username": "adm", "password": PASSWORD}, follow_redirects=False).status_code == 303
    page = client.get("/admin/users").text
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    ann, adm = _ids(db, "ann"), _ids(db, "adm")
    r = client.post(f"/admin/users/{ann}", data={"csrf_token": csrf, "action": "deactivate"}, follow_redirects=False)
    assert r.status_code == 303
    row = re.search(rf'<tr id="user-{ann}">.*?</tr>', client.get("/admin/users").text, re.S).group(0)
    assert "<td>no</td>" in row and 'value="activate"' in row
    r = client.post(f"/admin/users/{adm}", data={"csrf_token": csrf, "action": "role", "role": "annotator"})
    assert r.status_code == 422 and "only active admin" in r.text
    r = client.post(f"/admin/users/{ann}", data={"csrf_token": csrf, "action": "password", "password": "tiny"})
    assert r.status_code == 422 and "at least 8" in r.text
    # without the CSRF token nothing changes
    assert client.post(f"/admin/users/{ann}", data={"action": "activate"}).status_code == 403
    with db.session() as s:
        assert not s.scalar(select(User.is_active).where(User.id == ann))
        assert s.scalar(select(User.role).where(User.id == adm)) == "admin"
        assert s.scalar(select(func.count()).select_from(WebSession).where(WebSession.user_id == adm)) == 1


def test_two_admins_demoting_each_other_at_once_leave_one_admin_and_no_deadlock(db, monkeypatch):
    import threading

    import pixmo.users
    from pixmo.users import update_user

    add_users(db, [("a", "admin"), ("b", "admin")], password=None)
    barrier, outcome = threading.Barrier(2), {}
    set_password = pixmo.users.set_password

    def password_then_wait(session, username, password):  # noqa: ANN001, ANN202
        # both requests hold what they wrote so far, then go on together: the interleaving that
        # deadlocked when each locked its own row before the admin rows
        done = set_password(session, username, password)
        try:
            barrier.wait(2)
        except threading.BrokenBarrierError:
            pass  # the other one waits for this one's locks: serialised, as it should be
        return done

    monkeypatch.setattr(pixmo.users, "set_password", password_then_wait)

    def demote(name: str) -> None:
        try:
            with db.session(write_lock=True) as s:
                update_user(s, name, password="a-new-password", role="annotator")
            outcome[name] = "done"
        except ValidationError as exc:
            outcome[name] = "refused" if "only active admin" in str(exc) else str(exc)
        except Exception as exc:  # noqa: BLE001 - a deadlock would land here
            outcome[name] = type(exc).__name__

    threads = [threading.Thread(target=demote, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcome.values()) == ["done", "refused"], outcome
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(User).where(User.role == "admin")) == 1


def test_a_request_let_in_before_a_deactivation_gets_no_lease(team):
    from pixmo.assignments import LeaseError

    import datetime as dt

    from sqlalchemy import update

    from pixmo.db.models import utcnow

    db, project = team["db"], team["project"]
    ann = _ids(db, "ann")
    stale = next_assignment(db, project, ann).assignment.id
    with db.session() as s:  # a lease that ran out unnoticed is no lease to release
        s.execute(update(Assignment).where(Assignment.id == stale).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    with db.session(write_lock=True) as s:
        d = deactivate_user(s, "ann")
    assert d.leases_released == 0
    with pytest.raises(LeaseError, match="deactivated"):
        next_assignment(db, project, ann)  # as a /next that passed its login check just before
    assert next_assignment(db, project, _ids(db, "ann2")) is not None
