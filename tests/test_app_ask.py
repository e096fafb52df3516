"""Ask-the-model through the API with the real bundled LLM (SmolLM2) and real OCR (rapidocr)."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont
from sqlalchemy import select

from annotation_app.main import create_app
from pixmo.ask import AskModel
from pixmo.config import Settings
from pixmo.db.models import Assignment, Caption, Image, QAPair
from pixmo.projects import attach_images, create_project
from tests.app_helpers import add_users, tokens_for

pytestmark = pytest.mark.slow
CAPTION = "A shop window with a large white sign in it; the shop is a bakery with bread on shelves."


@pytest.fixture(scope="module")
def ask_model():
    pytest.importorskip("transformers")
    return AskModel(max_tokens=40)  # the bundled local model, loaded once for this module


def _sign_png() -> bytes:
    im = PILImage.new("RGB", (480, 200), "white")
    ImageDraw.Draw(im).text((30, 60), "FRESH BREAD", fill="black", font=ImageFont.load_default(size=56))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_ask_revise_accept(sqlite_db, store, tmp_path, ask_model):
    db = sqlite_db
    add_users(db, [("ann", "annotator"), ("ann2", "annotator"), ("rev", "reviewer")], password=None)
    data = _sign_png()
    put = store.put_bytes(data, ext="png")
    with db.session() as s:
        image = Image(sha256=put.sha256, storage_key=put.key, width=480, height=200, mime="image/png", bytes=len(data))
        s.add(image)
        s.flush()
        project = create_project(s, "ama", "ask")
        attach_images(s, project, [image.id])
        caption = Caption(image_id=image.id, kind="cleaned", text=CAPTION, model="test", prompt_version="t1",
                          source_key="x")
        s.add(caption)
        s.flush()
        project_id, caption_id = project.id, caption.id
    tokens = tokens_for(db, ["ann", "ann2", "rev"])
    app = create_app(Settings(env="test", data_dir=tmp_path / "d"), db=db, store=store, ask_model=ask_model)
    ann, ann2, rev = (TestClient(app, headers={"Authorization": f"Bearer {tokens[n]}"}) for n in ("ann", "ann2", "rev"))

    task = ann.post(f"/api/projects/{project_id}/next").json()["assignment"]
    assert ann.get(task["task_url"]).status_code == 200
    assert ann.post(f"/api/assignments/{task['id']}/ask", json={"question": ""}).status_code == 422
    r = ann.post(f"/api/assignments/{task['id']}/ask", json={"question": "What does the sign say?"})
    assert r.status_code == 201, r.text
    qa = r.json()
    assert qa["status"] == "pending" and qa["answer"] and qa["model"]
    with db.session() as s:
        row = s.get(QAPair, qa["id"])
        context = row.messages[0]
    # the model was given the caption and the OCR text of the image
    assert context["caption"] == CAPTION and "BREAD" in context["ocr_text"].upper()
    assert row.caption_id == caption_id and row.source == "ask" and row.prompt_version

    assert ann2.post(f"/api/qa/{qa['id']}/revise", json={"feedback": "x"}).status_code == 404
    r = ann.post(f"/api/qa/{qa['id']}/revise", json={"feedback": "Quote the sign exactly: FRESH BREAD."})
    assert r.status_code == 200, r.text
    revised = r.json()
    assert revised["revisions"][0]["answer"] == qa["answer"] and revised["answer"]

    assert ann2.post(f"/api/qa/{qa['id']}/accept", json={}).status_code == 404
    r = ann.post(f"/api/qa/{qa['id']}/accept", json={"active_seconds": 30})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert ann.post(f"/api/qa/{qa['id']}/revise", json={"feedback": "again"}).status_code == 422
    with db.session() as s:
        row = s.get(QAPair, qa["id"])
        assert [m["role"] for m in row.messages] == ["context", "user", "assistant", "user", "assistant"]
        assert s.get(Assignment, task["id"]).status == "submitted"
        assert s.scalars(select(QAPair).where(QAPair.status == "accepted")).one().answer == revised["answer"]
    queue = rev.get("/api/reviews/queue").json()
    assert [(q["target_type"], q["details"]["question"]) for q in queue] == [("qa_pair", "What does the sign say?")]
    # a question the annotator dropped for another one is not reviewed: its verdict would land on
    # the whole task (and free the image) while the accepted answer waits in the queue
    with db.session() as s:
        dropped = QAPair(image_id=row.image_id, project_id=row.project_id, user_id=row.user_id,
                         assignment_id=task["id"], source="ask", status="rejected", question="Old?", answer="Old.")
        s.add(dropped)
        s.flush()
        dropped_id = dropped.id
    r = rev.post("/api/reviews", json={"target_type": "qa_pair", "target_id": dropped_id, "verdict": "rejected",
                                       "reason": "wrong"})
    assert r.status_code == 422 and "accepted answer" in r.json()["detail"]
    with db.session() as s:
        assert s.get(Assignment, task["id"]).review_verdict is None
    r = rev.post("/api/reviews", json={"target_type": "qa_pair", "target_id": qa["id"], "verdict": "approved"})
    assert r.status_code == 201, r.text


def test_a_point_explanation_from_the_bundled_model(sqlite_db, store, tmp_path, ask_model):
    """The real model answers a point-explanation task citing the annotator's marks; the stored
    answer carries Molmo point text for each citation."""
    from pixmo.export.hf import split_point_explanation
    from tests.app_helpers import make_project

    db = sqlite_db
    add_users(db, [("ann", "annotator")], password=None)
    project_id, _ = make_project(db, store, "explain", "point_explain", overlap=1)
    app = create_app(Settings(env="test", data_dir=tmp_path / "d"), db=db, store=store, ask_model=ask_model)
    ann = TestClient(app, headers={"Authorization": f"Bearer {tokens_for(db, ['ann'])['ann']}"})
    task = ann.post(f"/api/projects/{project_id}/next").json()["assignment"]
    marks = [{"label": "dog", "points": [[0.2, 0.5]]}, {"label": "cat", "points": [[0.7, 0.4], [0.8, 0.45]]}]
    r = ann.post(f"/api/assignments/{task['id']}/explain",
                 json={"question": "What animals are in the picture?", "marks": marks})
    assert r.status_code == 201, r.text
    qa = r.json()
    assert qa["model"] and ("[1]" in qa["text"] or "[2]" in qa["text"])
    parts = split_point_explanation(qa["answer"])
    assert parts["parsed_response"] and "<|POINT|>" in parts["parsed_response"]
    assert set(parts["inline_text"]) <= {"dog", "cat"} and parts["inline_text"]
    assert ann.post(f"/api/qa/{qa['id']}/accept", json={}).json()["status"] == "accepted"
