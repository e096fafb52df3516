"""The annotation app's JSON API and pages, in-process (FastAPI TestClient) on SQLite and PostgreSQL."""

from __future__ import annotations

import time

import datetime as dt
import re

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from annotation_app.main import create_app
from pixmo.audio import decode_audio
from pixmo.config import Settings
from pixmo.db.models import Assignment, Base, LoginAttempt, PointSet, ProjectImage, Recording, Review, Transcript, as_utc, utcnow
from tests.app_helpers import PASSWORD, add_users, as_tiff, audio_bytes, make_project, tokens_for, tone, wav_bytes

HTML_LABEL = '<img src=x onerror="alert(1)">&<b>cat</b>'
MAX_UPLOAD = 300_000
ROLES = ("anonymous", "annotator", "reviewer", "admin")
RANK = {r: i for i, r in enumerate(ROLES)}


@pytest.fixture
def env(db, store, tmp_path):
    """An app with one user per role (+ a second annotator), a caption and a points project."""
    users = add_users(db, [("ann", "annotator"), ("ann2", "annotator"), ("rev", "reviewer"), ("adm", "admin")])
    caption, _ = make_project(db, store, "caps", "caption", n_images=3, min_seconds=2, max_seconds=6, overlap=1)
    points, _ = make_project(db, store, "pts", "points", n_images=3, seed=1, labels=[HTML_LABEL, "dog"], max_points=5)
    free, _ = make_project(db, store, "free", "points", n_images=1, seed=2)
    settings = Settings(env="test", data_dir=tmp_path / "data", max_upload_bytes=MAX_UPLOAD)
    app = create_app(settings, db=db, store=store)
    tokens = tokens_for(db, ["ann", "ann2", "rev", "adm"])
    clients = {"anonymous": TestClient(app)}
    for name, role in (("ann", "annotator"), ("rev", "reviewer"), ("adm", "admin"), ("ann2", "ann2")):
        clients[role] = TestClient(app, headers={"Authorization": f"Bearer {tokens[name]}"})
    return {"db": db, "store": store, "app": app, "users": users, "c": clients,
            "caption": caption, "points": points, "free": free}


def lease(env, project: str, who: str = "annotator") -> dict:
    r = env["c"][who].post(f"/api/projects/{env[project]}/next")
    assert r.status_code == 200, r.text
    return r.json()["assignment"]


def _image(task: dict) -> str:
    """Which image a task shows (annotators are not told image ids): its blob URL without the signature."""
    return task["image_url"].split("?")[0]


def snapshot(db) -> dict:
    """Row counts of every table (login attempts aside) and the state of every assignment."""
    with db.session() as s:
        counts = {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables
                  if t.name != "login_attempts"}
        states = s.execute(select(Assignment.id, Assignment.status, Assignment.review_verdict)
                           .order_by(Assignment.id)).all()
    return {"counts": counts, "assignments": [tuple(r) for r in states]}


# --------------------------------------------------------------------------- roles


def _routes(env) -> list[tuple[str, str, str, dict]]:
    """(method, path, lowest role, request kwargs) for every route, with real ids filled in."""
    a = lease(env, "points", "annotator")  # the annotator's own lease
    caption_lease = lease(env, "caption", "annotator")
    p = env["points"]
    with env["db"].session() as s:
        gold_image = s.scalars(select(ProjectImage.image_id).where(ProjectImage.project_id == p)).first()
    return [
        ("GET", "/", "annotator", {}),
        ("GET", "/api/me", "annotator", {}),
        ("GET", "/api/me/stats", "annotator", {}),
        ("GET", "/api/projects", "annotator", {}),
        ("GET", f"/api/projects/{p}", "annotator", {}),
        ("POST", f"/api/projects/{env['free']}/next", "annotator", {}),
        ("POST", f"/projects/{env['free']}/next", "annotator", {}),
        ("GET", f"/api/assignments/{a['id']}", "annotator", {}),
        ("GET", f"/tasks/{a['id']}", "annotator", {}),
        ("POST", f"/api/assignments/{a['id']}/heartbeat", "annotator", {"json": {"active_seconds": 1}}),
        ("POST", f"/api/assignments/{a['id']}/points", "annotator", {"json": {"label": "dog", "points": [[0.5, 0.5]]}}),
        ("POST", f"/api/assignments/{a['id']}/skip", "annotator", {"json": {"reason": "x"}}),
        ("POST", f"/api/assignments/{caption_lease['id']}/recording", "annotator",
         {"files": {"audio": ("a.webm", audio_bytes(3), "audio/webm")}, "data": {"idempotency_key": "role-test-key-1"}}),
        ("GET", "/api/recordings/1", "annotator", {}),
        # (the model is never called here: a caption task takes no question nor marks, and qa 999 does not exist)
        ("POST", f"/api/assignments/{caption_lease['id']}/ask", "annotator", {"json": {"question": "why?"}}),
        ("POST", f"/api/assignments/{caption_lease['id']}/explain", "annotator",
         {"json": {"question": "where?", "marks": [{"label": "dog", "points": [[0.5, 0.5]]}]}}),
        ("POST", "/api/qa/999/revise", "annotator", {"json": {"feedback": "wrong"}}),
        ("POST", "/api/qa/999/accept", "annotator", {"json": {}}),
        ("POST", "/logout", "annotator", {}),
        ("GET", "/review", "reviewer", {}),
        ("GET", "/api/reviews/queue", "reviewer", {}),
        ("POST", "/api/reviews", "reviewer", {"json": {"target_type": "point_set", "target_id": 1, "verdict": "approved"}}),
        ("GET", f"/api/projects/{p}/progress", "reviewer", {}),
        ("GET", "/admin", "admin", {}),
        ("GET", "/admin/projects", "admin", {}),
        ("POST", "/admin/projects", "admin", {"data": {"name": "new", "kind": "points"}}),
        ("GET", f"/admin/projects/{p}", "admin", {}),
        ("POST", f"/admin/projects/{p}/images", "admin", {"data": {"source": "all"}}),
        ("GET", "/admin/users", "admin", {}),
        ("POST", "/admin/users", "admin", {"data": {"username": "zed", "password": "long-enough-pw"}}),
        ("GET", "/api/users", "admin", {}),
        ("POST", "/api/users", "admin", {"json": {"username": "zed2", "password": "long-enough-pw"}}),
        ("PATCH", f"/api/users/{env['users']['ann2']}", "admin", {"json": {"role": "annotator"}}),
        ("DELETE", f"/api/users/{env['users']['ann2']}/tokens", "admin", {}),
        ("POST", f"/admin/users/{env['users']['ann2']}", "admin", {"data": {"action": "role", "role": "annotator"}}),
        ("POST", "/api/projects", "admin", {"json": {"name": "api-made", "kind": "caption"}}),
        ("POST", f"/api/projects/{p}/images", "admin", {"json": {"all_images": True}}),
        ("PUT", f"/api/projects/{p}/gold/{gold_image}", "admin", {"json": {"answer": {"points": {"dog": []}}}}),
    ]


def _flat(routes):
    for r in routes:  # FastAPI keeps included routers as nodes in newer versions
        if hasattr(r, "original_router"):
            yield from _flat(r.original_router.routes)
        elif hasattr(r, "path"):
            yield r


def test_every_route_checks_the_role(env):
    routes = _routes(env)
    # every route of the app is in the table (static files, docs, login and signed blobs are public)
    public = {"/login", "/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/static", "/blobs/{key:path}"}
    covered = {re.sub(r"/\d+", "/{}", path) for _, path, _, _ in routes}
    declared = {re.sub(r"\{[a-z_]+\}", "{}", r.path) for r in _flat(env["app"].routes) if r.path not in public}
    assert declared <= covered, declared - covered
    for method, path, lowest, kwargs in routes:
        for role in ROLES:
            if RANK[role] >= RANK[lowest]:
                continue
            before = snapshot(env["db"])
            r = env["c"][role].request(method, path, **kwargs)
            expected = 401 if role == "anonymous" else 403
            assert r.status_code == expected, (method, path, role, r.status_code, r.text[:200])
            assert snapshot(env["db"]) == before, (method, path, role)
    # and the lowest allowed role gets past the check (last, since these change things)
    for method, path, lowest, kwargs in routes:
        if path == "/logout":
            continue
        r = env["c"][lowest].request(method, path, follow_redirects=False, **kwargs)
        assert r.status_code not in (401, 403), (method, path, lowest, r.status_code, r.text[:300])


def test_other_users_assignments_are_not_found_and_unchanged(env):
    mine = lease(env, "points", "annotator")
    before = snapshot(env["db"])
    c = env["c"]["ann2"]
    for method, suffix, body in [("GET", "", None), ("POST", "/points", {"label": "dog", "points": [[0.1, 0.1]]}),
                                 ("POST", "/skip", {}), ("POST", "/heartbeat", {})]:
        r = c.request(method, f"/api/assignments/{mine['id']}{suffix}", json=body)
        assert r.status_code == 404, (suffix, r.text)
    assert snapshot(env["db"]) == before


# --------------------------------------------------------------------------- sessions, CSRF, rate limit


def _login(client: TestClient, username: str, password: str = PASSWORD):
    return client.post("/login", data={"username": username, "password": password}, follow_redirects=False)


def _csrf(client: TestClient) -> str:
    return re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").text).group(1)


def test_cookie_session_csrf_and_logout(env):
    client = TestClient(env["app"])
    r = _login(client, "ann", "wrong-password")
    assert r.status_code == 401 and "Wrong username or password" in r.text
    r = _login(client, "ann")
    assert r.status_code == 303
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/api/me").json()["username"] == "ann"
    before = snapshot(env["db"])
    url = f"/api/projects/{env['points']}/next"
    assert client.post(url).status_code == 403  # no CSRF token
    assert client.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403
    token = _csrf(client)
    assert client.post(url, headers={"X-CSRF-Token": token, "Origin": "https://evil.example"}).status_code == 403
    assert snapshot(env["db"]) == before
    r = client.post(url, headers={"X-CSRF-Token": token, "Origin": "http://testserver"})
    assert r.status_code == 200 and r.json()["assignment"]["label"] in (HTML_LABEL, "dog")
    # a form post carries the token as a field
    assert client.post("/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    assert client.get("/api/me").status_code == 401
    # the old cookie is dead server-side, not just deleted in this browser
    stale = TestClient(env["app"], cookies={"pixmo_session": r.request.headers["cookie"].split("=", 1)[1]})
    assert stale.get("/api/me").status_code == 401


def test_pages_redirect_to_login(env):
    r = env["c"]["anonymous"].get("/review", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/review"


def test_login_is_rate_limited(env):
    client = TestClient(env["app"])
    for _ in range(5):
        assert _login(client, "ann", "not-the-password").status_code == 401
    r = _login(client, "ann")  # even the right password waits now
    assert r.status_code == 429 and "too many failed logins" in r.text and int(r.headers["retry-after"]) > 0
    # another user from the same address is not locked out by ann's failures
    assert _login(TestClient(env["app"]), "rev").status_code == 303
    with env["db"].session() as s:
        assert s.scalar(select(func.count()).select_from(LoginAttempt).where(LoginAttempt.ok.is_(False))) == 5


def test_a_bad_page_address_is_an_html_page_for_a_browser(env):
    client = TestClient(env["app"])
    _login(client, "rev")
    r = client.get("/review?project=abc", headers={"Accept": "text/html"})
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html") and "project" in r.text
    api = env["c"]["reviewer"].get("/api/reviews/queue?project=abc")
    assert api.status_code == 422 and api.json()["detail"].startswith("project")


def test_pages_may_not_be_framed_by_other_sites(env):
    assert env["c"]["anonymous"].get("/login").headers["x-frame-options"] == "DENY"


def test_cross_site_login_is_refused(env):
    r = env["c"]["anonymous"].post("/login", data={"username": "ann", "password": PASSWORD},
                                   headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert r.status_code == 403


# --------------------------------------------------------------------------- uploads


def _upload(env, assignment_id: int, data: bytes, key: str, who: str = "annotator", name: str = "a.webm"):
    return env["c"][who].post(f"/api/assignments/{assignment_id}/recording",
                              files={"audio": (name, data, "audio/webm")},
                              data={"idempotency_key": key, "active_seconds": "7"})


def _stored_audio(env) -> list[str]:
    return [k for k in env["store"].iter_keys() if not k.endswith(".png")]


BAD_UPLOADS = {
    "not-audio": (lambda: b"this is plain text, not audio at all" * 10, 422, "not_audio", "not audio"),
    "too-short": (lambda: audio_bytes(0.8), 422, "too_short", "at least 2 s"),
    "too-long": (lambda: audio_bytes(8.5), 422, "too_long", "the limit is 6 s"),
    "silent": (lambda: audio_bytes(4, amplitude=0.0), 422, "silent", "silent"),
    "nearly-silent": (lambda: audio_bytes(4, amplitude=0.001), 422, "silent", "silent"),
    "empty": (lambda: b"", 422, "empty", "empty"),
    "too-big": (lambda: wav_bytes(tone(5)) * 2, 413, "too_big", "limit"),
}


def test_bad_uploads_are_refused_and_store_nothing(env):
    a = lease(env, "caption")
    for case, (make, status, reason, words) in BAD_UPLOADS.items():
        before = snapshot(env["db"])
        r = _upload(env, a["id"], make(), f"bad-upload-{case}")
        assert r.status_code == status, (case, r.text)
        assert words in r.json()["detail"], (case, r.json())
        assert r.json()["reason"] == reason, case
        assert snapshot(env["db"]) == before and _stored_audio(env) == [], case
    # the task is still open: a good take goes through
    assert _upload(env, a["id"], audio_bytes(3), "good-after-bad").status_code == 201


def test_upload_within_tolerance_and_replay_returns_first_result(env):
    a = lease(env, "caption")
    data = audio_bytes(6.6)  # over max 6 s, within the 1 s tolerance
    time.sleep(0.3)  # reported active time is capped by the time since the lease: let some pass
    r1 = _upload(env, a["id"], data, "replay-key-0001")
    assert r1.status_code == 201, r1.text
    r2 = _upload(env, a["id"], data, "replay-key-0001")
    r3 = _upload(env, a["id"], audio_bytes(3), "replay-key-0001")  # even other bytes: same answer
    assert r2.status_code == r3.status_code == 200
    assert r2.json()["id"] == r3.json()["id"] == r1.json()["id"] and r2.json()["replayed"]
    with env["db"].session() as s:
        recs = s.scalars(select(Recording)).all()
        assignment = s.get(Assignment, a["id"])
        assert len(recs) == 1 and assignment.status == "submitted" and assignment.active_seconds > 0
    assert len(_stored_audio(env)) == 1
    stored = env["store"].get_bytes(recs[0].storage_key)
    assert abs(decode_audio(stored).duration_s - 6.6) < 0.1 and recs[0].mime == "audio/webm"
    # a new key on a submitted task is refused
    assert _upload(env, a["id"], data, "replay-key-0002").status_code == 409
    # another user cannot use (or learn about) the key
    b = lease(env, "caption", "ann2")
    assert _upload(env, b["id"], data, "replay-key-0001", who="ann2").status_code == 409
    # the author reads it back, with a signed audio URL that serves the bytes
    info = env["c"]["annotator"].get(f"/api/recordings/{recs[0].id}").json()
    assert env["c"]["anonymous"].get(info["audio_url"]).content == stored
    assert env["c"]["ann2"].get(f"/api/recordings/{recs[0].id}").status_code == 404
    # the image id is for reviewers (annotators could spot gold images by it)
    assert info["image_id"] is None
    assert env["c"]["reviewer"].get(f"/api/recordings/{recs[0].id}").json()["image_id"] == recs[0].image_id


def test_a_key_is_bound_to_its_task_and_retries_at_once_all_get_the_first_recording(env):
    import threading

    from pixmo.db.models import User
    from pixmo.submissions import submit_recording

    first, other = lease(env, "caption"), None
    assert _upload(env, first["id"], audio_bytes(3), "bound-key-0001").status_code == 201
    other = lease(env, "caption")
    # the key of the first task, on another task: refused, and the other task is untouched
    r = _upload(env, other["id"], audio_bytes(4), "bound-key-0001")
    assert r.status_code == 409 and "belongs to another upload" in r.json()["detail"]
    with env["db"].session() as s:
        assert s.get(Assignment, other["id"]).status == "leased"
        user_id = s.scalars(select(User.id).where(User.username == "ann")).one()
    # four retries of one upload at once (a flaky network): one stores it, the others replay it
    barrier, outcomes = threading.Barrier(4), []

    def retry() -> None:
        barrier.wait()
        try:
            result = submit_recording(env["db"], env["store"], assignment_id=other["id"], user_id=user_id,
                                      data=audio_bytes(3), idempotency_key="retried-key-0001", max_bytes=MAX_UPLOAD)
            outcomes.append((result.replayed, result.recording.id))
        except Exception as exc:  # noqa: BLE001 - a failure is what the test looks for
            outcomes.append((type(exc).__name__, str(exc)))

    threads = [threading.Thread(target=retry) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(str(o[0]) for o in outcomes) == ["False", "True", "True", "True"], outcomes  # not LeaseError
    assert len({o[1] for o in outcomes}) == 1


def test_numbers_beyond_the_database_are_a_422_not_a_500(env):
    big = 99999999999999999999
    for who, method, path, body in [
        ("reviewer", "get", f"/api/projects/{big}", None),
        ("reviewer", "get", f"/api/reviews/queue?project={2**63}", None),
        ("annotator", "get", f"/api/assignments/{big}", None),
        ("reviewer", "post", "/api/reviews", {"target_type": "recording", "target_id": big, "verdict": "approved"}),
    ]:
        r = getattr(env["c"][who], method)(path, **({"json": body} if body is not None else {}))
        assert r.status_code in (404, 422), (path, r.status_code, r.text)
    a = lease(env, "points")
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/points",
                                   json={"label": "dog", "points": [[10**400, 0.2]], "method": "pointing"})
    assert r.status_code == 422 and "out of range" in r.json()["detail"]


def test_missing_idempotency_key_is_refused(env):
    a = lease(env, "caption")
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/recording",
                                   files={"audio": ("a.webm", audio_bytes(3), "audio/webm")})
    assert r.status_code == 400 and "idempotency key" in r.json()["detail"]


def test_expired_lease_is_reassigned(env):
    a = lease(env, "caption")
    with env["db"].session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        # the other two images are done by someone else already
    others = [lease(env, "caption", "ann2")]
    assert _image(others[0]) == _image(a)  # the abandoned image went back to the pool first
    r = _upload(env, a["id"], audio_bytes(3), "late-upload-key")
    assert r.status_code == 409 and "expired" in r.json()["detail"]


def test_a_heartbeat_takes_up_a_lapsed_lease_while_the_image_is_free(env):
    """A lease that ran out once (a laptop asleep) was never extended again: the page's heartbeats
    got 409s it did not show, and the image went to the next annotator, the work with it."""
    a = lease(env, "caption")
    with env["db"].session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/heartbeat", json={"active_seconds": 5})
    assert r.status_code == 204, r.text
    with env["db"].session() as s:
        row = s.get(Assignment, a["id"])
        assert row.status == "leased" and as_utc(row.expires_at) > utcnow() + dt.timedelta(minutes=20)
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    lease(env, "caption", "ann2")  # someone else takes the image meanwhile: now it is gone, and says so
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/heartbeat", json={"active_seconds": 6})
    assert r.status_code == 409 and "went to someone else" in r.json()["detail"]


def test_a_lapsed_lease_is_not_kept_alive_beside_a_newer_one(env):
    """A page whose lease lapsed, kept alive after the annotator had opened another task of the
    project, made two live leases of one annotator in one project; its work can still be sent."""
    a = lease(env, "caption")
    with env["db"].session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    other = lease(env, "caption", "ann2")  # takes the lapsed image, then gives it back
    b = lease(env, "caption")
    assert _image(other) == _image(a) != _image(b)
    assert env["c"]["ann2"].post(f"/api/assignments/{other['id']}/skip", json={"reason": "blurry"}).status_code == 200
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/heartbeat", json={"active_seconds": 5})
    assert r.status_code == 409 and "opened another task of this project" in r.json()["detail"]
    with env["db"].session() as s:
        live = s.scalars(select(Assignment.id).where(Assignment.status == "leased",
                                                    Assignment.expires_at > utcnow())).all()
    assert live == [b["id"]]
    sent = _upload(env, a["id"], audio_bytes(3), "lapsed-beside-newer")
    assert sent.status_code == 201, sent.text  # the work still goes


def test_late_upload_on_an_untaken_image_is_accepted(env):
    a = lease(env, "caption")
    with env["db"].session() as s:
        s.execute(update(Assignment).values(expires_at=utcnow() - dt.timedelta(minutes=1)))
    assert _upload(env, a["id"], audio_bytes(3), "late-but-free-key").status_code == 201


# --------------------------------------------------------------------------- points


BAD_POINT_SETS = [
    ({"label": "dog", "points": [[1.2, 0.5]]}, "outside the image"),
    ({"label": "dog", "points": [[0.5, -0.01]]}, "outside the image"),
    ({"label": "dog", "points": [[0.1, 0.1]] * 6}, "limit of 5"),
    ({"label": "dog", "points": [[0.5, 0.5]], "not_present": True}, "cannot have points"),
    ({"label": "dog", "points": []}, "at least one point"),
    ({"label": "", "points": [[0.5, 0.5]]}, "label is empty"),
    ({"label": "a unicorn", "points": [[0.5, 0.5]]}, "not one of this project's labels"),
    ({"label": "dog", "points": [[0.5]]}, "[x, y] pair"),
    ({"label": "dog", "points": [["a", "b"]]}, "outside the image"),
    ({"label": "dog", "points": [[0.5, 0.5]], "method": "guessing"}, "pointing or counting"),
]


def test_bad_point_sets_are_refused_and_store_nothing(env):
    a = lease(env, "points")
    for body, words in BAD_POINT_SETS:
        before = snapshot(env["db"])
        r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/points", json=body)
        assert r.status_code == 422, (body, r.text)
        assert words in r.json()["detail"], (body, r.json())
        assert snapshot(env["db"]) == before, body


def test_points_are_stored_normalised_and_not_present(env):
    a = lease(env, "points")
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/points",
                                   json={"label": "dog", "points": [[0.25, 0.5], [1, 1]], "method": "counting"})
    assert r.status_code == 201 and r.json()["points"] == [[0.25, 0.5], [1.0, 1.0]]
    b = lease(env, "points")
    r = env["c"]["annotator"].post(f"/api/assignments/{b['id']}/points", json={"label": "dog", "not_present": True})
    assert r.status_code == 201
    with env["db"].session() as s:
        sets = s.scalars(select(PointSet).order_by(PointSet.id)).all()
        assert [(p.method, p.not_present, len(p.points)) for p in sets] == [("counting", False, 2), ("pointing", True, 0)]


def test_free_label_projects_take_the_annotators_words(env):
    a = lease(env, "free")
    assert a["label"] is None
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/points", json={"label": "  red   car ", "points": [[0.3, 0.3]]})
    assert r.status_code == 201 and r.json()["label"] == "red car"


def test_labels_with_html_are_escaped(env):
    client = TestClient(env["app"])
    _login(client, "adm")
    # lease until the HTML label is the one asked for
    for _ in range(3):
        r = client.post(f"/projects/{env['points']}/next", data={"csrf_token": _csrf(client)}, follow_redirects=False)
        page = client.get(r.headers["location"]).text
        if "onerror" in page:
            break
        task_id = int(r.headers["location"].rsplit("/", 1)[1])
        client.post(f"/api/assignments/{task_id}/skip", json={}, headers={"X-CSRF-Token": _csrf(client)})
    assert HTML_LABEL not in page and "<img src=x" not in page
    assert "&lt;img src=x onerror=&#34;alert(1)&#34;&gt;&amp;&lt;b&gt;cat&lt;/b&gt;" in page
    admin_page = client.get(f"/admin/projects/{env['points']}").text
    assert "<b>cat</b>" not in admin_page and "&lt;b&gt;cat&lt;/b&gt;" in admin_page


# --------------------------------------------------------------------------- review, stats, admin


def test_review_reject_returns_image_and_annotator_sees_rate(env):
    p = env["caption"]
    a = lease(env, "caption")
    rec = _upload(env, a["id"], audio_bytes(3), "review-key-0001").json()
    with env["db"].session() as s:  # the reviewer sees the newest usable transcript
        s.add_all([Transcript(recording_id=rec["id"], asr_model="old", text="first take"),
                   Transcript(recording_id=rec["id"], asr_model="new", text="better take"),
                   Transcript(recording_id=rec["id"], asr_model="broken", status="failed", text="")])
    queue = env["c"]["reviewer"].get("/api/reviews/queue", params={"project": p}).json()
    assert [(q["target_type"], q["target_id"]) for q in queue] == [("recording", rec["id"])]
    assert queue[0]["details"]["audio_url"].startswith("/blobs/")
    assert (queue[0]["details"]["transcript"], queue[0]["details"]["asr_model"]) == ("better take", "new")
    bad = env["c"]["reviewer"].post("/api/reviews", json={"target_type": "recording", "target_id": rec["id"], "verdict": "rejected"})
    assert bad.status_code == 422 and "why" in bad.json()["detail"]
    ok = env["c"]["reviewer"].post("/api/reviews", json={"target_type": "recording", "target_id": rec["id"],
                                                         "verdict": "rejected", "reason": "mostly silence"})
    assert ok.status_code == 201
    assert env["c"]["reviewer"].get("/api/reviews/queue", params={"project": p}).json() == []
    # the rejected image is free again, for someone else
    assert _image(lease(env, "caption", "ann2")) == _image(a)
    stats = env["c"]["annotator"].get("/api/me/stats").json()["total"]
    assert stats["rejected"] == 1 and stats["rejection_rate"] == 1.0 and stats["submitted"] == 1
    progress = env["c"]["reviewer"].get(f"/api/projects/{p}/progress").json()
    assert progress["rejected"] == 1 and progress["leased"] == 1
    # nobody reviews their own work
    mine = lease(env, "caption", "admin")
    own = _upload(env, mine["id"], audio_bytes(3), "own-work-key-01", who="admin").json()
    r = env["c"]["admin"].post("/api/reviews", json={"target_type": "recording", "target_id": own["id"], "verdict": "approved"})
    assert r.status_code == 422 and "own work" in r.json()["detail"]
    with env["db"].session() as s:
        assert s.scalar(select(func.count()).select_from(Review)) == 1


def test_admin_api_creates_projects_users_and_attaches_images(env):
    c = env["c"]["admin"]
    r = c.post("/api/projects", json={"name": "new-caps", "kind": "caption", "min_seconds": 3, "max_seconds": 30,
                                      "overlap": 2, "gold_fraction": 0.1})
    assert r.status_code == 201 and r.json()["config"]["overlap"] == 2
    pid = r.json()["id"]
    assert c.post("/api/projects", json={"name": "new-caps", "kind": "caption"}).status_code == 422
    assert c.post("/api/projects", json={"name": "x", "kind": "video"}).status_code == 422
    assert c.post("/api/projects", json={"name": "y", "kind": "caption", "min_seconds": 9, "max_seconds": 5}).status_code == 422
    r = c.post("/api/projects", json={"name": "de-caps", "kind": "caption", "language": "de", "lease_minutes": 10})
    assert r.status_code == 201 and r.json()["config"]["language"] == "de" and r.json()["config"]["lease_minutes"] == 10
    r = c.post("/api/projects", json={"name": "z", "kind": "caption", "language": "deutsch"})
    assert r.status_code == 422 and "a language is a Whisper code" in r.text
    r = c.post(f"/api/projects/{pid}/images", json={"from_project": "caps"})
    assert r.json() == {"attached": 3, "images": 3}
    assert c.post(f"/api/projects/{pid}/images", json={"all_images": True}).json() == {"attached": 4, "images": 7}
    assert c.post(f"/api/projects/{pid}/images", json={"image_ids": [999]}).status_code == 404
    r = c.post("/api/users", json={"username": "newbie", "password": "long-enough-pw", "role": "reviewer"})
    assert r.status_code == 201 and r.json()["role"] == "reviewer"
    assert c.post("/api/users", json={"username": "newbie", "password": "long-enough-pw"}).status_code == 422
    assert "newbie" in [u["username"] for u in c.get("/api/users").json()]
    assert env["c"]["anonymous"].get("/docs").status_code == 200
    assert "/api/projects/{project_id}/next" in env["c"]["anonymous"].get("/openapi.json").json()["paths"]


def test_admin_pages_create_project_and_show_errors(env):
    client = TestClient(env["app"])
    _login(client, "adm")
    token = _csrf(client)
    r = client.post("/admin/projects", data={"csrf_token": token, "name": "form-made", "kind": "points",
                                             "labels": "cat\ndog\n", "attach_all": "true", "language": "fr",
                                             "lease_minutes": "15"}, follow_redirects=False)
    assert r.status_code == 303
    assert {k: v for k, v in env["c"]["admin"].get(r.headers["location"].replace("/admin", "/api")).json()["config"].items()
            if k in ("language", "lease_minutes")} == {"language": "fr", "lease_minutes": 15}
    page = client.get(r.headers["location"]).text
    assert "form-made" in page and "cat, dog" in page
    r = client.post("/admin/projects", data={"csrf_token": token, "name": "form-made", "kind": "points"})
    assert r.status_code == 422 and "exists already" in r.text
    r = client.post("/admin/users", data={"csrf_token": token, "username": "bad name!", "password": "long-enough-pw"})
    assert r.status_code == 422 and "must be 1-64 letters" in r.text


def test_project_settings_that_could_never_work_are_refused_everywhere(env):
    """The admin form had no bounds (the JSON API had some): a 300-character label could never be
    submitted (every task of the project ended up asking for it), a huge overlap broke the admin
    projects page for good, and a 200-character name was a 500 on PostgreSQL."""
    client = TestClient(env["app"])
    _login(client, "adm")
    token = _csrf(client)
    for data, message in [
        ({"name": "long-label", "kind": "points", "labels": "a\n" + "L" * 300}, "at most 200 characters"),
        ({"name": "huge-overlap", "kind": "caption", "overlap": "99999999999999999999999"}, "overlap"),
        ({"name": "many-points", "kind": "points", "max_points": "20000"}, "max_points"),
        ({"name": "N" * 200, "kind": "caption"}, "at most 128 characters"),
        ({"name": "c1\u0085name", "kind": "caption"}, "control characters"),
        ({"name": "lang", "kind": "caption", "language": "english"}, "a language is a Whisper code"),
    ]:
        r = client.post("/admin/projects", data={"csrf_token": token, **data}, follow_redirects=False)
        assert r.status_code == 422 and message in r.text, (data, r.status_code, r.text[-300:])
    assert client.get("/admin/projects").status_code == 200
    api = env["c"]["admin"]
    assert api.post("/api/projects", json={"name": "p", "kind": "points", "labels": ["a", "L" * 300]}).status_code == 422
    r = api.post("/api/projects", json={"name": "  spaced  ", "kind": "caption"})
    assert r.status_code == 201 and r.json()["name"] == "spaced"  # trimmed, as the form trims
    r = api.post("/api/projects", json={"name": "  " + "b" * 128 + "  ", "kind": "caption"})
    assert r.status_code == 201 and r.json()["name"] == "b" * 128  # trimmed before its length is checked
    # a project stored under the older, looser rules still loads
    from pixmo.db.models import Project
    from pixmo.projects import project_config
    from pixmo.submissions import check_points

    with env["db"].session() as s:
        old = Project(name="old", kind="points", config={"overlap": 10**20, "labels": ["x" * 300, "red  cup", " mug "]})
        s.add(old)
        s.flush()
        cfg = project_config(old)  # the nearest valid settings: within bounds, labels that can be submitted
        assert (cfg.overlap, cfg.labels) == (100, ["red cup", "mug"])
        assert check_points(cfg, "red  cup", [[0.5, 0.5]], False, "pointing")[0] == "red cup"
        from pixmo.assignments import project_progress

        project_progress(s, old)  # an overlap of 10**20 overflowed here, and broke the admin projects page
    # what SQLite could hold from before (inf; a label with a control character) loads too
    legacy = project_config(Project(name="legacy", kind="points", config={"max_seconds": float("inf"), "labels": ["cup\x01", "dog"]}))
    assert legacy.max_seconds == 86_400.0 and legacy.labels == ["dog"] and legacy.overlap == 1


def test_signed_blob_urls(env):
    a = lease(env, "points")
    url = a["image_url"]
    assert env["c"]["anonymous"].get(url).headers["content-type"] == "image/png"
    assert env["c"]["anonymous"].get(url.replace("sig=", "sig=0")).status_code == 403
    assert env["c"]["anonymous"].get(url.split("?")[0]).status_code == 403


def test_project_labels_are_cleaned_as_answers_are_and_leases_stay_in_range():
    from pixmo.projects import ProjectConfig
    from pixmo.submissions import check_points

    cfg = ProjectConfig(labels=["big  dog", " ", "big dog", "\tcat "])
    assert cfg.labels == ["big dog", "cat"]  # a label with two spaces could never be answered
    assert check_points(cfg, "big  dog", [[0.5, 0.5]], False, "pointing")[0] == "big dog"
    with pytest.raises(Exception, match="less than or equal"):
        ProjectConfig(lease_minutes=1e12)  # every next-task request failed on the date arithmetic


def test_a_small_file_of_long_silence_is_refused_without_decoding_it_all():
    """3 minutes of silence compress to a few kB of FLAC; decoding it all took memory in
    proportion to its length (hours fit in an upload), the length being checked only afterwards."""
    import tracemalloc

    import numpy as np

    from pixmo.audio import encode_audio
    from pixmo.projects import ProjectConfig
    from pixmo.submissions import UploadRejected, check_audio

    data = encode_audio(np.zeros(16_000 * 180, np.float32), fmt="flac", codec="flac")
    assert len(data) < 200_000
    tracemalloc.start()
    try:
        with pytest.raises(UploadRejected) as refused:
            check_audio(data, ProjectConfig(min_seconds=2, max_seconds=6), max_bytes=MAX_UPLOAD)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "too_long" and "the limit is 6 s" in str(refused.value)
    assert peak < 4_000_000  # the whole decode would hold 180 s x 16 kHz x 4 B = 11.5 MB, twice


def test_nul_characters_and_infinities_are_refused_clearly_on_both_backends(env):
    """PostgreSQL's text and JSON cannot hold a NUL or inf: each used to be a 500 there (and was stored
    on SQLite). Now the same answer on both backends, or a 422 where PostgreSQL alone refuses."""
    db = env["db"]
    r = _login(TestClient(env["app"]), "ann\x00", PASSWORD)  # anyone can send this
    assert r.status_code == 401
    with db.session() as s:
        assert s.scalar(select(LoginAttempt.username).order_by(LoginAttempt.id.desc())) == "ann"
    a = lease(env, "free")
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/points",
                                   json={"label": "cat\u0000dog", "points": [[0.5, 0.5]], "method": "pointing"})
    assert r.status_code == 422 and "control characters" in r.json()["detail"]
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/skip", json={"reason": "blurry\u0000"})
    assert r.status_code == 200
    with db.session() as s:
        assert s.get(Assignment, a["id"]).skip_reason == "blurry"
    for body in ('{"name": "endless", "kind": "caption", "max_seconds": Infinity}',
                 '{"name": "nul\\u0000name", "kind": "caption"}',
                 '{"name": "lbl", "kind": "points", "labels": ["a\\u0000b"]}'):
        r = env["c"]["admin"].post("/api/projects", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.status_code, r.text)
    # a lone surrogate (valid JSON, no valid text) in free text: a 422, not a 500, and nothing stored
    a = lease(env, "points")
    r = env["c"]["annotator"].post(f"/api/assignments/{a['id']}/skip", content='{"reason": "blurry \\ud83d"}',
                                   headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "valid Unicode" in r.json()["detail"], (r.status_code, r.text)
    with db.session() as s:
        assert s.get(Assignment, a["id"]).status == "leased"
    # free text that only PostgreSQL refuses: a clear 422 there, never a 500
    a = lease(env, "caption")
    rec = _upload(env, a["id"], audio_bytes(3), "nul-key-00001").json()
    r = env["c"]["reviewer"].post("/api/reviews", json={"target_type": "recording", "target_id": rec["id"],
                                                        "verdict": "rejected", "reason": "bad\u0000"})
    if db.is_sqlite:
        assert r.status_code == 201
    else:
        assert r.status_code == 422 and "NUL" in r.json()["detail"]


def test_api_times_carry_their_zone(env):
    a = lease(env, "caption")
    body = env["c"]["annotator"].get(f"/api/assignments/{a['id']}").json()
    expires = dt.datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00"))
    assert expires.utcoffset() == dt.timedelta(0), body["expires_at"]  # was naive on SQLite


def test_a_nul_postgresql_refuses_in_a_json_value_is_a_422(env):
    """PostgreSQL refuses a NUL inside JSONB with another message than in text: also a 422, not a 500."""
    from sqlalchemy.exc import DataError

    def boom():
        raise DataError("INSERT ...", {}, Exception("unsupported Unicode escape sequence\nDETAIL: \\u0000 cannot be converted to text."))

    env["app"].add_api_route("/api/test-nul-json", boom)
    r = TestClient(env["app"], raise_server_exceptions=False).get("/api/test-nul-json")
    assert r.status_code == 422 and "NUL" in r.json()["detail"]


def test_an_oversized_body_is_refused_before_it_is_read(env):
    """FastAPI read (and spooled to disk) a body of any size before the login check or the upload
    limit applied: an anonymous 5 MB upload was read in full, then answered 401."""
    read = {"bytes": 0}
    app = env["app"]

    async def counting(scope, receive, send):
        async def counted():
            message = await receive()
            read["bytes"] += len(message.get("body", b""))
            return message

        await app(scope, counted, send)

    big = b"\0" * (5 * MAX_UPLOAD)
    for client in (TestClient(counting), TestClient(counting, headers=env["c"]["annotator"].headers)):
        read["bytes"] = 0
        r = client.post("/api/assignments/1/recording", files={"audio": ("a.webm", big)}, data={"idempotency_key": "k" * 10})
        assert r.status_code == 413 and "limit" in r.json()["detail"], r.text
        assert read["bytes"] < 2 * MAX_UPLOAD  # refused from its declared length, not read
        read["bytes"] = 0
        r = client.post("/api/reviews", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and read["bytes"] < 2 * MAX_UPLOAD

    def chunks():  # no Content-Length: counted as it arrives (the test client hands it over at once)
        for _ in range(50):
            yield b"\0" * 100_000

    r = TestClient(app, headers=env["c"]["annotator"].headers).post(
        "/api/reviews", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"], r.text


def test_annotators_are_not_told_which_tasks_are_check_items(env, db, store):
    gold_project, _ = make_project(db, store, "checks", "points", n_images=0, gold=2, seed=9, overlap=2,
                                   gold_fraction=1.0, labels=["dog"])
    seen = {}
    for who in ("annotator", "reviewer"):
        r = env["c"][who].post(f"/api/projects/{gold_project}/next")
        task = r.json()["assignment"]
        page = env["c"][who].get(task["task_url"]).text
        again = env["c"][who].get(f"/api/assignments/{task['id']}").json()
        project = env["c"][who].get(f"/api/projects/{gold_project}").json()
        listed = {p["id"]: p for p in env["c"][who].get("/api/projects").json()}[gold_project]
        seen[who] = (task["is_gold"], again["is_gold"], "check item" in page, task["image_id"] is not None,
                     "gold_fraction" in project["config"], "gold_fraction" in listed["config"])
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Assignment).where(Assignment.is_gold.is_(True))) == 2
    # nor the image ids (gold images, attached apart, stand out in their order) or the gold fraction
    assert seen == {"annotator": (None, None, False, False, False, False), "reviewer": (True, True, True, True, True, True)}


def test_a_rejected_task_is_rejected_item_by_item(env):
    """A verdict on a whole task (the dashboard's Browse) lands on each of its items too: the export
    leaves them out and the annotator sees the reason, as for a rejected item."""
    from pixmo.curation.review import submit_review
    from pixmo.export.hf import hf_rows
    from pixmo.export.records import build_samples
    from pixmo.reviews import recent_rejections

    db = env["db"]
    task = lease(env, "points")
    r = env["c"]["annotator"].post(f"/api/assignments/{task['id']}/points", json={"label": "dog", "points": [[0.5, 0.5]]})
    assert r.status_code in (200, 201), r.text

    def points_rows() -> list:
        with db.session() as s:
            samples = build_samples(s, [s.get(Assignment, task["id"]).image_id], val_fraction=0.0)
        return [row for smp in samples for row in hf_rows("points", smp, "http://x")]

    assert len(points_rows()) == 1
    with db.session(write_lock=True) as s:
        submit_review(s, env["users"]["rev"], "assignment", task["id"], "rejected", "careless clicking")
    assert points_rows() == []
    with db.session() as s:
        assert [x["reason"] for x in recent_rejections(s, env["users"]["ann"])] == ["careless clicking"]
        assert s.get(Assignment, task["id"]).review_verdict == "rejected"
    with db.session(write_lock=True) as s:  # approved again on a second look: back in the export
        submit_review(s, env["users"]["rev"], "assignment", task["id"], "approved")
    assert len(points_rows()) == 1
    with db.session() as s:  # and the annotator's feedback no longer shows a rejection taken back
        assert recent_rejections(s, env["users"]["ann"]) == []


def task_image(db, task: dict) -> int:
    with db.session() as s:
        return s.get(Assignment, task["id"]).image_id


def test_two_reviewers_at_once_leave_the_task_verdict_in_step_with_its_items(env):
    import threading

    from pixmo.db.queries import newest_verdicts
    from pixmo.reviews import add_review

    db = env["db"]
    task = lease(env, "points")
    ps = env["c"]["annotator"].post(f"/api/assignments/{task['id']}/points",
                                    json={"label": "dog", "points": [[0.5, 0.5]]}).json()
    with db.session() as s:  # a second item of the same submission
        other = PointSet(image_id=task_image(db, task), project_id=env["points"], user_id=env["users"]["ann"],
                         assignment_id=task["id"], label="dog", points=[[0.2, 0.2]], method="pointing")
        s.add(other)
        s.flush()
        other_id = other.id
    first = db.Session(bind=db.write_engine, expire_on_commit=False)
    first.begin()
    add_review(first, env["users"]["rev"], "point_set", ps["id"], "rejected", "wrong object")

    def second() -> None:  # judges the other item meanwhile
        with db.session(write_lock=True) as s:
            add_review(s, env["users"]["adm"], "point_set", other_id, "approved")

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)  # the second reviewer is under way (or waiting) while the first has not committed
    first.commit()
    first.close()
    t.join(30)
    with db.session() as s:
        newest = newest_verdicts(s, {"point_set": [ps["id"], other_id], "assignment": [task["id"]]})
        assert sorted(newest.values()) == ["approved", "rejected"]
        assert s.get(Assignment, task["id"]).review_verdict == "rejected"  # the worst current verdict


def test_the_review_page_for_all_projects(env):
    """The project picker's "All projects" sends ?project= (empty): every project, not a 422."""
    client = TestClient(env["app"])
    _login(client, "rev")
    page = client.get("/review", params={"project": ""}, headers={"Accept": "text/html"})
    assert page.status_code == 200 and "All projects" in page.text
    assert env["c"]["reviewer"].get("/api/reviews/queue", params={"project": ""}).status_code == 200
    assert env["c"]["reviewer"].get("/api/reviews/queue", params={"project": "x"}).status_code == 422


def test_a_tiff_is_shown_to_annotators_and_reviewers_as_a_jpeg(env):
    """Browsers show no TIFF: the task and the review queue link a JPEG drawn from it, of its size."""
    import io

    from PIL import Image as PILImage

    from pixmo.db.models import Image

    with env["db"].session() as s:
        image_ids = list(s.scalars(select(ProjectImage.image_id).where(ProjectImage.project_id == env["free"])))
    as_tiff(env["db"], env["store"], image_ids[0])
    task = lease(env, "free")
    assert "/renditions/" in task["image_url"] and (task["width"], task["height"]) == (120, 90)
    shown = env["c"]["annotator"].get(task["image_url"])
    assert shown.status_code == 200 and shown.headers["content-type"] == "image/jpeg"
    assert PILImage.open(io.BytesIO(shown.content)).size == (120, 90)
    r = env["c"]["annotator"].post(f"/api/assignments/{task['id']}/points", json={"label": "sky", "points": [[0.7, 0.2]]})
    assert r.status_code == 201, r.text
    (item,) = env["c"]["reviewer"].get("/api/reviews/queue", params={"project": env["free"]}).json()
    assert item["image_url"].split("?")[0] == task["image_url"].split("?")[0]
    with env["db"].session() as s:  # the images row still names the original
        assert s.get(Image, image_ids[0]).storage_key.endswith(".tif")


def test_an_upload_that_is_no_browser_recording_is_refused_and_not_stored(env, monkeypatch):
    """An ffconcat file naming a stored blob was accepted as a 4 s recording (ffmpeg read the blob
    it named, relative to the server's folder) and kept, as application/octet-stream, as the receipt."""
    monkeypatch.chdir(env["store"].root)  # as `pixmo serve` runs beside its ./pixmo-data/blobs
    a = lease(env, "caption")
    first = _upload(env, a["id"], audio_bytes(4), "concat-key-0001").json()
    with env["db"].session() as s:
        key = s.get(Recording, first["id"]).storage_key
    b = lease(env, "caption")
    before = snapshot(env["db"])
    for i, data in enumerate([f"ffconcat version 1.0\nfile {key}\n".encode(), f"file '{key}'\n".encode()]):
        r = _upload(env, b["id"], data, f"concat-key-100{i}")
        assert r.status_code == 422 and "not_audio" in r.text, r.text
    assert snapshot(env["db"]) == before
