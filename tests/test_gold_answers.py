"""Gold answers: an admin makes an attached image a check item of a points project with its expected
points (API and CLI); the point sets on it are then scored for gold accuracy. SQLite and PostgreSQL."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from annotation_app.main import create_app
from pixmo.config import Settings
from pixmo.curation.gold import gold_results
from pixmo.db.models import Image, PointSet, ProjectImage
from tests.app_helpers import add_users, make_project, tokens_for


@pytest.fixture
def gold_env(db, store, tmp_path):
    users = add_users(db, [("ann", "annotator"), ("ann2", "annotator"), ("adm", "admin")], password=None)
    points, images = make_project(db, store, "pts", "points", n_images=2, labels=["red square", "dog"])
    ama, _ = make_project(db, store, "ama", "ask", n_images=1, seed=4)
    app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store)
    tokens = tokens_for(db, ["ann", "adm"])
    c = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    with db.session() as s:
        sha = s.get(Image, images[0]).sha256
    return {"db": db, "users": users, "points": points, "ama": ama, "images": images, "sha": sha, "c": c}


def test_an_admin_sets_a_gold_answer_and_point_sets_on_it_are_scored(gold_env):
    db, c, users, image = gold_env["db"], gold_env["c"], gold_env["users"], gold_env["images"][0]
    url = f"/api/projects/{gold_env['points']}/gold/{gold_env['sha']}"  # by sha256 (or id)
    answer = {"label": "red square", "points": [[0.5, 0.5], [0.2, 0.3]]}
    assert c["ann"].put(url, json={"answer": answer}).status_code == 403
    r = c["adm"].put(url, json={"answer": answer})
    assert r.status_code == 200, r.text
    assert r.json() == {"image_id": image, "is_gold": True,
                        "gold_answer": {"points": {"red square": [[0.5, 0.5], [0.2, 0.3]]}}}
    with db.session() as s:
        for user, pts in (("ann", [[0.21, 0.3], [0.5, 0.49]]), ("ann2", [[0.9, 0.9], [0.5, 0.5]])):
            s.add(PointSet(image_id=image, project_id=gold_env["points"], user_id=users[user], label="red square",
                           points=pts, method="pointing"))
        s.add(PointSet(image_id=image, project_id=gold_env["points"], user_id=users["ann"], label="dog",
                       points=[[0.1, 0.1]], method="pointing"))  # a label the answer does not name: unscored
    with db.session() as s:
        assert gold_results(s, gold_env["points"]) == {users["ann"]: (1, 1), users["ann2"]: (1, 0)}
    # "dog" not present: now the dog point set is scored too, and wrong
    r = c["adm"].put(f"/api/projects/{gold_env['points']}/gold/{image}",
                     json={"answer": {"points": {"red square": answer["points"], "dog": []}}})
    assert r.status_code == 200, r.text
    with db.session() as s:
        assert gold_results(s, gold_env["points"]) == {users["ann"]: (2, 1), users["ann2"]: (1, 0)}
    # cleared: still a gold item, nothing scored
    assert c["adm"].put(url, json={"answer": None}).json() == {"image_id": image, "is_gold": True, "gold_answer": None}
    with db.session() as s:
        assert gold_results(s, gold_env["points"]) == {}


@pytest.mark.parametrize(("answer", "status", "message"), [
    ({"points": {"cat": [[0.5, 0.5]]}}, 422, "not one of the project's labels"),
    ({"points": {"dog": [[1.5, 0.5]]}}, 422, "lies outside the image"),
    ({"points": {"dog": [[True, 0.5]]}}, 422, "pairs of numbers"),
    ({"points": {"dog": "here"}}, 422, "pairs of numbers"),
    ({"points": {}}, 422, "a gold answer is"),
    ({"dog": [[0.5, 0.5]]}, 422, "a gold answer is"),
    ({"points": {"dog": [[0.1, 0.1]], " dog ": []}}, 422, "given twice"),
    ('{"answer": {"points": {"dog\\ud800": [[0.1, 0.1]]}}}', 422, "valid Unicode text"),  # a lone surrogate (was a 500)
])
def test_bad_gold_answers_are_refused_and_change_nothing(gold_env, answer, status, message):
    db, c = gold_env["db"], gold_env["c"]
    body = {"content": answer, "headers": {"Content-Type": "application/json"}} if isinstance(answer, str) \
        else {"json": {"answer": answer}}  # a str: the raw body, JSON escapes and all
    r = c["adm"].put(f"/api/projects/{gold_env['points']}/gold/{gold_env['images'][0]}", **body)
    assert r.status_code == status and message in r.json()["detail"], r.text
    with db.session() as s:
        assert not any(s.scalars(select(ProjectImage.is_gold)))


def test_gold_answers_need_an_attached_image_of_a_points_project(gold_env):
    c = gold_env["c"]["adm"]
    body = {"answer": {"points": {"dog": []}}}
    # what is not an image id is looked up as a sha256 (64 digits too); nothing here is a server error
    for ref in ("9" * 64, "\u00b2", "9" * 30):
        r = c.put(f"/api/projects/{gold_env['points']}/gold/{ref}", json=body)
        assert r.status_code == 404 and "no image" in r.json()["detail"], (ref, r.text)
    r = c.put(f"/api/projects/{gold_env['ama']}/gold/{gold_env['images'][0]}", json=body)
    assert r.status_code == 422 and "scored for points projects" in r.json()["detail"]
    r = c.put(f"/api/projects/{gold_env['points']}/gold/{'f' * 64}", json=body)
    assert r.status_code == 404 and "no image" in r.json()["detail"]
    with gold_env["db"].session() as s:
        other = s.scalars(select(ProjectImage.image_id).where(ProjectImage.project_id == gold_env["ama"])).one()
    r = c.put(f"/api/projects/{gold_env['points']}/gold/{other}", json=body)
    assert r.status_code == 404 and "attach it first" in r.json()["detail"]


def test_progress_counts_regular_images_only(gold_env):
    """An image made gold after it was done no longer counts as a done regular image (it showed 200 %)."""
    from pixmo.assignments import project_progress
    from pixmo.db.models import Assignment, Project

    db, users = gold_env["db"], gold_env["users"]
    with db.session() as s:
        for image in gold_env["images"]:
            s.add(Assignment(project_id=gold_env["points"], image_id=image, user_id=users["ann"], status="submitted"))
    with db.session() as s:
        assert project_progress(s, s.get(Project, gold_env["points"]))["percent_complete"] == 100.0
    r = gold_env["c"]["adm"].put(f"/api/projects/{gold_env['points']}/gold/{gold_env['images'][0]}",
                                 json={"answer": {"points": {"dog": []}}})
    assert r.status_code == 200, r.text
    with db.session() as s:
        progress = project_progress(s, s.get(Project, gold_env["points"]))
    assert (progress["gold_images"], progress["complete_images"], progress["percent_complete"]) == (1, 1, 100.0)


def test_the_cli_sets_and_clears_a_gold_answer(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from pixmo.cli import app
    from pixmo.db.session import _databases

    monkeypatch.chdir(tmp_path)
    _databases.clear()
    runner = CliRunner()

    def invoke(*args: str):  # noqa: ANN202
        return runner.invoke(app, list(args), catch_exceptions=False)

    try:
        assert invoke("init").exit_code == 0
        assert invoke("demo", "--images", "4", "--no-speech").exit_code == 0
        db = next(iter(_databases.values()))
        with db.session() as s:
            image = s.scalars(select(Image).order_by(Image.id)).first()
            sha, image_id = image.sha256, image.id
        out = invoke("project", "gold", "demo-points", sha, "--answer", '{"points": {"red circle": [[0.25, 0.4]]}}')
        assert out.exit_code == 0, out.output
        assert f"image {image_id} of demo-points is a gold item" in " ".join(out.output.split())
        with db.session() as s:
            row = s.scalars(select(ProjectImage).where(ProjectImage.image_id == image_id,
                                                       ProjectImage.gold_answer.is_not(None))).one()
            assert row.is_gold and row.gold_answer == {"points": {"red circle": [[0.25, 0.4]]}}
        bad = invoke("project", "gold", "demo-points", sha, "--answer", "{not json")
        assert bad.exit_code == 2 and "not JSON" in bad.output
        neither = invoke("project", "gold", "demo-points", sha)
        assert neither.exit_code == 2 and "--answer JSON, or --clear" in neither.output
        null = invoke("project", "gold", "demo-points", sha, "--answer", "null")
        assert null.exit_code == 2 and "use --clear" in null.output
        # user text in a message is shown as written, not read as console markup (it crashed)
        odd = invoke("project", "gold", "demo-points", sha, "--answer", '{"points": {"[/x] car": [[0.5, 0.5]]}}')
        assert odd.exit_code == 2 and "'[/x] car' is not one of the project's labels" in " ".join(odd.output.split())
        assert invoke("project", "gold", "demo-points", str(image_id), "--clear").exit_code == 0
        with db.session() as s:
            assert s.scalars(select(ProjectImage.gold_answer).where(ProjectImage.image_id == image_id,
                                                                    ProjectImage.is_gold.is_(True))).all() == [None]
        assert json.loads(invoke("stats", "--json").output)["totals"]["images"] == 4
    finally:
        for database in _databases.values():
            database.dispose()
        _databases.clear()
