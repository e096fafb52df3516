"""Point explanations (PixMo-Point-Explanations) in the annotation app, on SQLite and PostgreSQL: the
annotator marks things and asks; the model's answer cites the marks as [n] (a scripted backend
behind the real `pixmo.llm` task, so its parsing and point rendering are the real ones); the
accepted answer is exported as a ``point_explanations`` row. The real bundled model answers one in
tests/test_app_ask.py; a real browser drives the page at the end of this file."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from annotation_app.main import create_app
from pixmo.ask import MAX_MARKS, AskModel
from pixmo.config import Settings
from pixmo.db.models import Assignment, PointSet, QAPair, Review
from pixmo.errors import ValidationError
from pixmo.export.hf import export_hf
from pixmo.formats.points import render_points
from pixmo.llm.backend import Completion
from pixmo.reviews import add_review, record_review
from tests.app_helpers import PASSWORD, add_users, make_project, serve_in_thread, tokens_for

MARKS = [{"label": "chair", "points": [[0.2, 0.7], [0.6, 0.7]]}, {"label": "sofa", "points": [[0.5, 0.4]]}]
REPLY = "You can sit on the chairs [1] or on the sofa [2]."


class ScriptedBackend:
    """An LLM backend that replies with the next of ``replies`` (the last one again when they run out)."""

    model_id = "scripted-model"

    def __init__(self, *replies: str, delay: float = 0.0) -> None:
        self.replies = list(replies)
        self.delay = delay  # seconds each reply takes, as a real model's would
        self.conversations: list[list[dict]] = []

    def complete_batch(self, conversations, **options):  # noqa: ANN001, ANN003, ANN201
        time.sleep(self.delay)
        self.conversations += conversations
        out = []
        for _ in conversations:
            text = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
            out.append(Completion(text=text, completion_tokens=len(text.split())))
        return out


@pytest.fixture
def app_for(db, store, tmp_path):
    ids = add_users(db, [("ann", "annotator"), ("rev", "reviewer")], password=None)
    tokens = tokens_for(db, ["ann", "rev"])

    def make(backend: ScriptedBackend):  # noqa: ANN202
        app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store,
                         ask_model=AskModel(backend))
        return {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}

    return make, ids


def _task(client, project: int) -> dict:  # noqa: ANN001
    return client.post(f"/api/projects/{project}/next").json()["assignment"]


def test_marks_a_question_and_an_accepted_answer_become_a_point_explanations_row(db, store, tmp_path, app_for):
    make, ids = app_for
    backend = ScriptedBackend(REPLY)
    c = make(backend)
    project, (image_id,) = make_project(db, store, "explain", "point_explain", overlap=1)
    task = _task(c["ann"], project)
    page = c["ann"].get(task["task_url"])
    assert page.status_code == 200 and "point_explain.js" in page.text and "point at the answer" in page.text

    r = c["ann"].post(f"/api/assignments/{task['id']}/explain",
                      json={"question": " Where can I  sit? ", "marks": MARKS})
    assert r.status_code == 201, r.text
    qa = r.json()
    assert qa["status"] == "pending" and qa["question"] == "Where can I sit?" and qa["marks"] == MARKS
    assert qa["text"] == REPLY  # what the annotator reads: citations as [n]
    # what is stored and exported: Molmo point text in place of each citation
    assert qa["answer"] == (f"You can sit on the chairs {render_points([(0.2, 0.7), (0.6, 0.7)], 'chair')} "
                            f"or on the sofa {render_points([(0.5, 0.4)], 'sofa')}.")
    sent = backend.conversations[0][-1]["content"]  # the model was told the question and the numbered marks
    assert "Where can I sit?" in sent and "[1] chair (2 points)" in sent and "[2] sofa (1 point)" in sent

    # the page, loaded again, shows the answer with its question and marks
    data = c["ann"].get(task["task_url"]).text.split('id="qa-data">')[1].split("</script>")[0]
    assert json.loads(data) == {"id": qa["id"], "question": "Where can I sit?", "text": REPLY, "marks": MARKS}

    r = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={"active_seconds": 40})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    with db.session() as s:
        row = s.get(QAPair, qa["id"])
        assignment = s.get(Assignment, task["id"])
        assert s.scalar(select(func.count()).select_from(PointSet)) == 0  # marks are not exhaustive point sets
    assert row.source == "point_explain" and row.model == "scripted-model" and row.prompt_version == "point_explain-v1"
    assert row.messages[0] == {"role": "context", "marks": MARKS, "at": row.messages[0]["at"]}
    assert assignment.status == "submitted"

    result = export_hf(db, store, tmp_path / "hf", "point_explanations")
    assert result.rows == 1
    (got,) = pq.read_table(tmp_path / "hf" / "point_explanations" / "train-00000.parquet").to_pylist()
    assert got["question"] == "Where can I sit?" and got["response"] == qa["answer"]
    assert got["parsed_response"] == "You can sit on the chairs <|POINT|> or on the sofa <|POINT|>."
    assert got["alt_text"] == ["chair", "sofa"] and got["inline_text"] == ["chair", "sofa"]
    assert got["points"] == [[[20.0, 70.0], [60.0, 70.0]], [[50.0, 40.0]]]

    # the reviewer sees what the annotator saw: the text citing [n], the marks drawn numbered, a legend
    page = c["rev"].get("/review").text
    assert REPLY in page and page.count('class="marker numbered"') == 3
    assert "[1] chair (2 points)" in page and "[2] sofa (1 point)" in page
    (item,) = c["rev"].get("/api/reviews/queue").json()
    assert item["details"]["text"] == REPLY and item["details"]["marks"] == MARKS
    assert record_review(db, ids["rev"], "qa_pair", qa["id"], "approved").verdict == "approved"


@pytest.mark.parametrize(("marks", "message"), [
    ([], "Mark at least one thing"),
    ([{"label": "  ", "points": [[0.1, 0.1]]}], "Mark [1]: say what it is"),
    ([MARKS[0], {"label": "lamp", "points": []}], "Mark [2] (lamp) has no points"),
    ([{"label": "lamp", "points": [[1.2, 0.5]]}], "Mark [1] (lamp): a point lies outside the image"),
    ([{"label": "lamp", "points": [[0.5]]}], "each point must be an [x, y] pair"),
    ([{"label": "lamp", "points": [[0.5, 0.5]]}] * (MAX_MARKS + 1), f"more than {MAX_MARKS}"),
    ([{"label": "a\x00b", "points": [[0.5, 0.5]]}], "the label is refused"),
    (["chair"], "must be an object"),
    ([{"label": 5, "points": [[0.5, 0.5]]}], "Mark [1]: the label must be text"),
    ([{"label": "lamp", "points": [["0.1", "0.2"]]}], "pair of numbers"),
    ([{"label": "lamp", "points": [[True, False]]}], "pair of numbers"),
    ([{"label": "lamp", "points": [[None, 0.5]]}], "pair of numbers"),
])
def test_bad_marks_are_refused_before_the_model_is_asked(db, store, app_for, marks, message):
    make, _ = app_for
    backend = ScriptedBackend(REPLY)
    c = make(backend)
    project, _ = make_project(db, store, "explain", "point_explain", overlap=1)
    task = _task(c["ann"], project)
    r = c["ann"].post(f"/api/assignments/{task['id']}/explain", json={"question": "Where?", "marks": marks})
    assert r.status_code == 422 and message in r.json()["detail"], r.text
    assert backend.conversations == []
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(QAPair)) == 0


def test_each_task_kind_takes_only_its_own_requests(db, store, app_for):
    make, _ = app_for
    c = make(ScriptedBackend(REPLY))
    explain, _ = make_project(db, store, "explain", "point_explain", overlap=1)
    ama, _ = make_project(db, store, "ama", "ask", overlap=1, seed=1)
    pe, ask_task = _task(c["ann"], explain), _task(c["ann"], ama)
    r = c["ann"].post(f"/api/assignments/{pe['id']}/ask", json={"question": "What is it?"})
    assert r.status_code == 422 and "not an ask task" in r.json()["detail"]
    r = c["ann"].post(f"/api/assignments/{ask_task['id']}/explain", json={"question": "Where?", "marks": MARKS})
    assert r.status_code == 422 and "not a point_explain task" in r.json()["detail"]
    r = c["ann"].post(f"/api/assignments/{pe['id']}/points", json={"label": "chair", "points": [[0.2, 0.2]]})
    assert r.status_code == 422 and "not a points task" in r.json()["detail"]
    qa = c["ann"].post(f"/api/assignments/{pe['id']}/explain", json={"question": "Where?", "marks": MARKS}).json()
    r = c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "cite the sofa"})
    assert r.status_code == 422 and "not revised" in r.json()["detail"]


def test_asking_again_sets_the_earlier_answer_aside_and_only_the_accepted_one_is_reviewed(db, store, app_for):
    make, ids = app_for
    # the second question's first reply cites a mark that does not exist: the model is told and tries again
    backend = ScriptedBackend(REPLY, "The sofa [3].", "The sofa [2] is soft.")
    c = make(backend)
    project, _ = make_project(db, store, "explain", "point_explain", overlap=1)
    task = _task(c["ann"], project)
    first = c["ann"].post(f"/api/assignments/{task['id']}/explain", json={"question": "Where?", "marks": MARKS}).json()
    second = c["ann"].post(f"/api/assignments/{task['id']}/explain",
                           json={"question": "What is soft?", "marks": MARKS}).json()
    assert second["text"] == "The sofa [2] is soft."
    assert "only [1] to [2] are marked" in backend.conversations[-1][-1]["content"]
    with db.session() as s:
        assert s.get(QAPair, first["id"]).status == "rejected" and s.get(QAPair, second["id"]).status == "pending"
    with pytest.raises(ValidationError, match="only the accepted answer"):
        record_review(db, ids["rev"], "qa_pair", first["id"], "approved")
    assert c["ann"].post(f"/api/qa/{first['id']}/accept", json={}).status_code == 422  # set aside: not accepted
    assert c["ann"].post(f"/api/qa/{second['id']}/accept", json={}).status_code == 200
    with db.session() as s:  # a verdict on the whole task (the dashboard's)
        add_review(s, ids["rev"], "assignment", task["id"], "rejected", reason="wrong sofa")
    with db.session() as s:
        targets = set(s.scalars(select(Review.target_id).where(Review.target_type == "qa_pair")))
    assert targets == {second["id"]}  # the task's verdict lands on the accepted answer alone


def test_an_answer_that_cites_no_mark_is_not_stored(db, store, app_for):
    make, _ = app_for
    c = make(ScriptedBackend("You can sit anywhere."))
    project, _ = make_project(db, store, "explain", "point_explain", overlap=1)
    task = _task(c["ann"], project)
    r = c["ann"].post(f"/api/assignments/{task['id']}/explain", json={"question": "Where?", "marks": MARKS})
    assert r.status_code == 502 and "try again" in r.json()["detail"]
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(QAPair)) == 0
        assert s.get(Assignment, task["id"]).status == "leased"


# -- in a real browser -----------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


@pytest.mark.slow
def test_the_page_in_chromium_marks_asks_resumes_and_accepts(sqlite_template, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed")
    from playwright.sync_api import sync_playwright

    from pixmo.db.session import Database
    from pixmo.storage import LocalStore

    shutil.copy(sqlite_template, tmp_path / "app.db")
    db = Database(f"sqlite:///{tmp_path / 'app.db'}")
    store = LocalStore(tmp_path / "blobs", secret="browser-test-secret-0123456789", public_url="http://127.0.0.1")
    add_users(db, [("alice", "annotator")])
    make_project(db, store, "explain", "point_explain", size=(480, 360), overlap=1)
    make_project(db, store, "ama", "ask", size=(480, 360), overlap=1, seed=5)
    app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store,
                     ask_model=AskModel(ScriptedBackend("The squares [1] are left of the dot [2].", delay=1.5)))
    clicks = {"square": [(0.2, 0.3), (0.3, 0.6)], "dot": [(0.8, 0.5)]}
    with serve_in_thread(app) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new", "--disable-gpu"])
        page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/login")
        page.fill("#username", "alice")
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(url + "/")
        assert "point and explain" in page.inner_text("body")
        page.click("button[data-project=explain]")
        page.wait_for_url("**/tasks/*")
        page.wait_for_load_state("load")
        page.wait_for_function("document.getElementById('task-image').complete")

        def click(fx: float, fy: float) -> None:
            box = page.locator("#task-image").bounding_box()
            page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])

        page.fill("#question", "Where are the squares?")
        page.fill("#label", "square")
        for fx, fy in [*clicks["square"], (0.5, 0.9)]:
            click(fx, fy)
        assert page.inner_text("#count") == "3"
        page.locator(".marker.draft").nth(2).click()  # clicking a point of the mark being made removes it
        assert page.inner_text("#count") == "2"
        page.press("#label", "Enter")  # the mark joins the list
        assert page.inner_text("#marks").startswith("[1] square (2 points)")
        page.fill("#label", "dot")
        click(*clicks["dot"][0])
        page.click("#ask")  # the mark being made is added first
        # while the model answers, nothing that was asked can change (the answer is for what was sent)
        assert page.eval_on_selector("#question", "e => e.readOnly") and page.eval_on_selector("#label", "e => e.readOnly")
        assert page.locator("#marks button").count() == 2 and all(
            b.is_disabled() for b in page.locator("#marks button").all())
        page.wait_for_selector("#answer-card:not([hidden])")
        assert not page.eval_on_selector("#question", "e => e.readOnly")
        assert page.inner_text("#answer") == "The squares [1] are left of the dot [2]."
        assert page.locator(".marker.marked").count() == 3

        page.reload()  # the answer, the question and the marks come back
        page.wait_for_selector("#answer-card:not([hidden])")
        assert page.input_value("#question") == "Where are the squares?"
        assert "[2] dot (1 point)" in page.inner_text("#marks")
        page.click("#accept")
        page.wait_for_selector("text=Nothing left for you")
        # the ask page starts as every task page does (startTask in common.js): no script error
        page.goto(url + "/")
        page.click("button[data-project=ama]")
        page.wait_for_url("**/tasks/*")
        page.wait_for_load_state("load")
        page.fill("#question", "")
        page.click("#ask")
        assert page.inner_text("#error") == "Write a question first."  # its script is running
        assert errors == []
        browser.close()
    with db.session() as s:
        qa = s.scalars(select(QAPair)).one()
    assert qa.status == "accepted" and qa.source == "point_explain"
    marks = qa.messages[0]["marks"]
    assert [m["label"] for m in marks] == ["square", "dot"]
    for mark, name in zip(marks, ["square", "dot"], strict=True):
        for (x, y), (fx, fy) in zip(mark["points"], clicks[name], strict=True):
            assert abs(x - fx) < 0.01 and abs(y - fy) < 0.01
    db.dispose()
