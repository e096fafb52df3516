"""The ask-the-model exchange's state machine under concurrency and lapsed leases, on SQLite and
PostgreSQL: a stand-in model that can be held mid-answer (the real bundled model is exercised in
tests/test_app_ask.py); no OCR."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

import pixmo.ask as ask
from annotation_app.main import create_app
from pixmo.assignments import expire_leases
from pixmo.config import Settings
from pixmo.db.models import Assignment, QAPair, utcnow
from tests.app_helpers import add_users, make_project, tokens_for


class HeldModel:
    """Answers at once, or waits for ``gate`` when it is set (a slow model call)."""

    def __init__(self) -> None:
        self.n = 0
        self.captions: list[str] = []  # the caption each question was answered from
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def _go(self) -> None:
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.n += 1

    def answer(self, question, caption, ocr):  # noqa: ANN001, ANN201
        self.captions.append(caption)
        self._go()
        return ask.Answer(f"answer {self.n}", "held-model", "ask-v1")

    def revise(self, question, caption, ocr, previous, feedback):  # noqa: ANN001, ANN201
        self.captions.append(caption)
        self._go()
        return ask.Answer(f"revised {self.n}", "held-model", "revise-v1")


@pytest.fixture
def flow(db, store, tmp_path, monkeypatch):
    monkeypatch.setattr(ask, "_ocr_cached", lambda sha, key, store: "")
    model = HeldModel()
    ids = add_users(db, [("ann", "annotator"), ("ann2", "annotator")], password=None)
    tokens = tokens_for(db, ["ann", "ann2"])
    app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store, ask_model=model)
    c = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    project, _ = make_project(db, store, "ama", "ask", n_images=1, overlap=1)
    task = c["ann"].post(f"/api/projects/{project}/next").json()["assignment"]
    qa = c["ann"].post(f"/api/assignments/{task['id']}/ask", json={"question": "What is it?"}).json()
    return {"db": db, "store": store, "model": model, "ids": ids, "c": c, "task": task, "qa": qa, "project": project}


def test_parallel_revisions_stay_within_the_limit_and_pair_feedback_with_its_answer(flow):
    c, qa, model = flow["c"], flow["qa"], flow["model"]
    for i in range(ask.MAX_REVISIONS - 1):
        assert c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": f"no {i}"}).status_code == 200
    model.gate = threading.Event()  # three tabs send feedback on the same answer at once
    codes = []
    threads = [threading.Thread(target=lambda i=i: codes.append(
        c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": f"tab {i}"}).status_code)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    model.gate.set()
    for t in threads:
        t.join(30)
    assert sorted(codes) == [200, 409, 409]
    with flow["db"].session() as s:
        row = s.get(QAPair, qa["id"])
    assert len(row.revisions) == ask.MAX_REVISIONS
    # each entry: the answer replaced, the feedback given on it, and who wrote that answer
    answers = [r["answer"] for r in row.revisions]
    assert answers[0] == "answer 1" and all(a.startswith("revised") for a in answers[1:])
    assert [r["prompt_version"] for r in row.revisions] == ["ask-v1"] + ["revise-v1"] * (ask.MAX_REVISIONS - 1)
    assert (row.model, row.prompt_version) == ("held-model", "revise-v1")  # the row names its current answer's writer


def test_a_revision_that_ends_after_a_skip_is_not_stored(flow):
    c, qa, model, task = flow["c"], flow["qa"], flow["model"], flow["task"]
    model.gate, out = threading.Event(), {}
    t = threading.Thread(target=lambda: out.update(r=c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "x"})))
    model.entered.clear()
    t.start()
    model.entered.wait(10)
    assert c["ann"].post(f"/api/assignments/{task['id']}/skip", json={"reason": "unclear"}).status_code == 200
    model.gate.set()
    t.join(30)
    assert out["r"].status_code == 409 and "skipped" in out["r"].json()["detail"]
    with flow["db"].session() as s:
        assert s.get(QAPair, qa["id"]).revisions == []


def test_a_lapsed_lease_works_for_asking_as_for_accepting(flow):
    """Ask, revise and accept follow one rule: a lapsed lease still counts while nobody took the
    image over; once someone has, all three answer 409."""
    db, c, qa, task = flow["db"], flow["c"], flow["qa"], flow["task"]

    def lapse() -> None:
        with db.session() as s:
            s.execute(update(Assignment).where(Assignment.id == task["id"])
                      .values(expires_at=utcnow() - dt.timedelta(minutes=1)))
        expire_leases(db)

    lapse()
    r = c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "shorter"})
    assert r.status_code == 200, r.text
    lapse()
    r = c["ann"].post(f"/api/assignments/{task['id']}/ask", json={"question": "And now?"})
    assert r.status_code == 201, r.text
    second = r.json()
    lapse()
    assert c["ann2"].post(f"/api/projects/{flow['project']}/next").json()["assignment"] is not None  # taken over
    for path, body in ((f"/api/qa/{second['id']}/revise", {"feedback": "x"}),
                       (f"/api/assignments/{task['id']}/ask", {"question": "Still?"}),
                       (f"/api/qa/{second['id']}/accept", {})):
        r = c["ann"].post(path, json=body)
        assert r.status_code == 409 and "someone else" in r.json()["detail"], (path, r.status_code, r.text)


def test_asking_again_while_accepting_does_not_deadlock(flow, monkeypatch):
    db, qa, task, ids, model = flow["db"], flow["qa"], flow["task"], flow["ids"], flow["model"]
    real = ask.get_assignment
    slow = threading.local()

    def held(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if getattr(slow, "on", False):
            time.sleep(0.5)  # the accept holds its first lock a while
        return real(*args, **kwargs)

    monkeypatch.setattr(ask, "get_assignment", held)
    out = {}

    def accept() -> None:
        slow.on = True
        try:
            out["accept"] = ask.accept_answer(db, qa_id=qa["id"], user_id=ids["ann"]).status
        except Exception as exc:  # noqa: BLE001
            out["accept"] = type(exc).__name__

    def again() -> None:
        time.sleep(0.2)
        try:
            out["ask"] = ask.ask_question(db, flow["store"], model, assignment_id=task["id"], user_id=ids["ann"],
                                          question="Another?").status
        except Exception as exc:  # noqa: BLE001
            out["ask"] = type(exc).__name__

    threads = [threading.Thread(target=accept), threading.Thread(target=again)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # one of them wins; the other is refused cleanly (never a deadlock's 500)
    assert sorted(out.values()) in (["LeaseError", "accepted"], ["ValidationError", "pending"]), out


def test_the_model_answers_from_the_caption_the_export_would_use(flow):
    from pixmo.db.models import Caption, Review

    db, c, task = flow["db"], flow["c"], flow["task"]
    with db.session() as s:
        image_id = s.get(Assignment, task["id"]).image_id
        human = Caption(image_id=image_id, kind="cleaned", text="A red bicycle against a wall.", model="curator",
                        prompt_version="edit", produced_by="human", source_transcript_ids=[], source_key="h")
        wrong = Caption(image_id=image_id, kind="merged", text="Two dogs on a beach.", model="m",
                        prompt_version="merge-v1", produced_by="llm", source_transcript_ids=[], source_key="m")
        s.add_all([human, wrong])
        s.flush()
        s.add(Review(target_type="caption", target_id=wrong.id, image_id=image_id, verdict="rejected",
                     reason="hallucinated"))
    r = c["ann"].post(f"/api/assignments/{task['id']}/ask", json={"question": "What colour is it?"})
    assert r.status_code == 201, r.text
    assert flow["model"].captions[-1] == "A red bicycle against a wall."  # not the newer, rejected merge


def test_a_revision_is_written_from_the_caption_the_question_was_answered_from(flow):
    """A caption written between the question and the revision was given to the model unrecorded: the
    row's caption_id and context message named the old one."""
    from pixmo.db.models import Caption

    db, c, task = flow["db"], flow["c"], flow["task"]
    with db.session() as s:
        image_id = s.get(Assignment, task["id"]).image_id
        s.add(Caption(image_id=image_id, kind="cleaned", text="A red car next to a tree.", model="m",
                      prompt_version="clean-v1", source_transcript_ids=[], source_key="a"))
    qa = c["ann"].post(f"/api/assignments/{task['id']}/ask", json={"question": "What colour is the car?"}).json()
    with db.session() as s:
        s.add(Caption(image_id=image_id, kind="merged", text="A blue van parked by two trees.", model="m",
                      prompt_version="merge-v1", source_transcript_ids=[], source_key="b"))
    r = c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "look again"})
    assert r.status_code == 200, r.text
    assert flow["model"].captions[-2:] == ["A red car next to a tree."] * 2
    with db.session() as s:
        row = s.get(QAPair, qa["id"])
        assert s.get(Caption, row.caption_id).text == "A red car next to a tree."


def test_an_accept_sent_again_returns_the_accepted_answer(flow):
    c, qa = flow["c"], flow["qa"]
    first = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={})
    again = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={})  # the first response was lost
    assert first.status_code == again.status_code == 200 and again.json() == first.json()
    assert c["ann2"].post(f"/api/qa/{qa['id']}/accept", json={}).status_code == 404  # not another user's


def test_only_the_answer_the_annotator_saw_is_accepted(flow):
    """Accept took the row's answer whatever the page showed: after a revision whose reply was lost
    (a proxy timeout) the annotator accepted an answer nobody had read."""
    c, qa = flow["c"], flow["qa"]
    revised = c["ann"].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "it is blue"}).json()
    assert revised["answer"] != qa["answer"]  # the page never got this reply and still shows the first
    r = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={"answer": qa["answer"]})
    assert r.status_code == 409 and "changed since you saw it" in r.json()["detail"]
    with flow["db"].session() as s:
        assert s.get(QAPair, qa["id"]).status == "pending"
    r = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={"answer": revised["answer"]})
    assert r.status_code == 200 and r.json()["answer"] == revised["answer"] and r.json()["status"] == "accepted"


def test_a_skipped_task_leaves_no_question_pending(flow):
    c, qa, task = flow["c"], flow["qa"], flow["task"]
    assert c["ann"].post(f"/api/assignments/{task['id']}/skip", json={"reason": "blurry"}).status_code == 200
    with flow["db"].session() as s:
        assert s.get(QAPair, qa["id"]).status == "rejected"  # set aside, as a newer question would set it
    r = c["ann"].post(f"/api/qa/{qa['id']}/accept", json={})
    assert r.status_code == 409 and "skipped" in r.json()["detail"]


def test_two_exchanges_on_one_caption_are_both_revised(db, store, tmp_path, monkeypatch):
    """A revised row takes the reviser's model and prompt with a free index: the second exchange on
    the same caption failed for good (its revision was flushed with its old index, taken by the first)."""
    from pixmo.db.models import Caption, ProjectImage

    monkeypatch.setattr(ask, "_ocr_cached", lambda sha, key, store: "")
    add_users(db, [("ann", "annotator"), ("ann2", "annotator")], password=None)
    tokens = tokens_for(db, ["ann", "ann2"])
    app = create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store, ask_model=HeldModel())
    c = {n: TestClient(app, headers={"Authorization": f"Bearer {t}"}) for n, t in tokens.items()}
    project, _ = make_project(db, store, "ama", "ask", n_images=1, overlap=2)
    with db.session() as s:
        image_id = s.scalars(select(ProjectImage.image_id).where(ProjectImage.project_id == project)).one()
        s.add(Caption(image_id=image_id, kind="cleaned", text="A red car.", model="m", prompt_version="clean-v1",
                      source_key="x"))
    qas = []
    for who in ("ann", "ann2"):
        task = c[who].post(f"/api/projects/{project}/next").json()["assignment"]
        qas.append(c[who].post(f"/api/assignments/{task['id']}/ask", json={"question": "What is it?"}).json())
    for who, qa in zip(("ann", "ann2"), qas, strict=True):
        r = c[who].post(f"/api/qa/{qa['id']}/revise", json={"feedback": "shorter"})
        assert r.status_code == 200, r.text
    with db.session() as s:
        rows = [s.get(QAPair, qa["id"]) for qa in qas]
    assert [(r.prompt_version, r.idx) for r in rows] == [("revise-v1", 1), ("revise-v1", 2)]
    assert all(r.caption_id is not None for r in rows)


def test_a_failing_model_server_is_not_named_to_the_annotator(db, store, tmp_path, monkeypatch, caplog):
    """The model's error went to the page as it was: the internal address of the LLM server and its
    own words. The annotator is told to try again; the log keeps the details."""
    import logging

    from pixmo.llm.errors import LLMError

    class Down(HeldModel):
        def answer(self, question, caption, ocr):  # noqa: ANN001, ANN201
            raise LLMError("http://llm-internal.corp:8000/v1/chat/completions failed after 1 tries: ConnectError")

    monkeypatch.setattr(ask, "_ocr_cached", lambda sha, key, store: "")
    add_users(db, [("ann", "annotator")], password=None)
    client = TestClient(create_app(Settings(env="test", data_dir=tmp_path / "data"), db=db, store=store, ask_model=Down()),
                        headers={"Authorization": f"Bearer {tokens_for(db, ['ann'])['ann']}"})
    project, _ = make_project(db, store, "ama", "ask", n_images=1)
    task = client.post(f"/api/projects/{project}/next").json()["assignment"]
    with caplog.at_level(logging.WARNING, "annotation_app.main"):
        r = client.post(f"/api/assignments/{task['id']}/ask", json={"question": "What is it?"})
    assert r.status_code == 502 and "try again" in r.json()["detail"] and "llm-internal" not in r.text
    assert "llm-internal.corp" in caplog.text
