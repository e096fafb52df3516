"""Exchanges with the model: ask-the-model (PixMo-AskModelAnything) and point explanations.

Ask: an annotator writes a question about an image; a language-only LLM answers from the image's
best caption and its OCR text; the annotator accepts, or says what is wrong and the model revises.
Point explanations (PixMo-Point-Explanations): the annotator writes a question and first marks the
things the answer should point at (a label and points each); the LLM answers citing the marks,
and the stored answer has Molmo point text in place of each citation; the annotator accepts it,
or changes the question or the marks and asks again.

The whole exchange (messages and every earlier answer with its feedback) is one ``qa_pairs`` row
with ``source`` ``ask`` or ``point_explain``: ``pending`` while it runs, ``accepted`` when the
annotator accepts it (that is the QA row exporters use), ``rejected`` when the annotator abandons
the question for another one.

The LLM sits behind :class:`AskModel`, a small adapter over ``pixmo.llm`` (its ``ask``, ``revise``
and ``point_explain`` tasks with their versioned prompts), so the app and tests can hand in any
backend.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pixmo.assignments import LeaseError, claim_lease, get_assignment, mark_submitted
from pixmo.db.models import EXCHANGE_SOURCES, Assignment, Image, Project, QAPair, utcnow
from pixmo.db.session import Database
from pixmo.errors import NotFoundError, PixmoError, ValidationError
from pixmo.formats.points import PointShapeError, stored_points
from pixmo.projects import ProjectConfig, clean_label, project_config
from pixmo.storage import BlobStore

MAX_REVISIONS = 5
MAX_TEXT_CHARS = 2000
ANSWER_MAX_TOKENS = 120
MAX_MARKS = 9  # cited [1] to [9]: more marks than that is no longer one answer


class AskFailed(PixmoError):
    """The model gave no usable answer (the annotator may try again)."""


@dataclass(frozen=True)
class Answer:
    text: str
    model_id: str
    prompt_version: str


@dataclass(frozen=True)
class Explanation(Answer):
    """A point explanation: ``text`` cites marks as ``[n]``; ``response`` has Molmo point text there."""

    response: str = ""


class AskModel:
    """The LLM behind ask-the-model: ``answer`` and ``revise`` over a ``pixmo.llm`` backend.

    With no backend given, one is made on first use from ``PIXMO_LLM_BACKEND`` (``local``, the
    bundled SmolLM2, by default, or ``openai``), ``PIXMO_LLM_MODEL`` and ``PIXMO_LLM_BASE_URL``.
    """

    def __init__(self, backend: Any = None, *, max_tokens: int = ANSWER_MAX_TOKENS):
        self._backend = backend
        self._lock = threading.Lock()
        self.max_tokens = max_tokens

    @property
    def backend(self) -> Any:
        with self._lock:
            if self._backend is None:
                from pixmo.llm import backend_from_env

                self._backend = backend_from_env()
            return self._backend

    def _result(self, result: Any) -> Answer:
        if not result.ok or not result.text.strip():
            raise AskFailed(f"the model gave no usable answer ({result.reason or result.error or 'empty'}); try again")
        return Answer(result.text.strip(), result.model_id, result.prompt_version)

    def answer(self, question: str, caption: str, ocr_text: str) -> Answer:
        from pixmo.llm import tasks

        return self._result(tasks.ask(self.backend, question, caption, ocr_text, max_tokens=self.max_tokens))

    def revise(self, question: str, caption: str, ocr_text: str, previous_answer: str, feedback: str) -> Answer:
        from pixmo.llm import tasks

        return self._result(tasks.revise(self.backend, question, caption, ocr_text, previous_answer, feedback,
                                         max_tokens=self.max_tokens))

    def explain(self, question: str, marks: list[dict[str, Any]]) -> Explanation:
        """Answer ``question`` citing ``marks`` (``[{"label", "points"}]``, normalised points)."""
        from pixmo.llm import tasks

        result = tasks.point_explain(self.backend, question, marks, max_tokens=self.max_tokens)
        answer = self._result(result)
        return Explanation(answer.text, answer.model_id, answer.prompt_version, result.output.response)


@dataclass(frozen=True)
class ImageContext:
    """What the model may see of an image: its best caption and the text in it."""

    caption_id: int | None
    caption: str
    ocr_text: str


def best_caption(session: Session, image_id: int) -> tuple[str, int | None]:
    """The text to answer from, and its caption row's id: the caption the export would write for the
    image (`pixmo.export.records.best_caption`: never one a reviewer rejected or flagged, or one
    written from rejected speech; merged before cleaned, a curator's before a model's), else the
    longest usable transcript (id None), else ``""``."""
    from pixmo.export.records import best_caption_of

    return best_caption_of(session, image_id)


@lru_cache(maxsize=512)
def _ocr_cached(sha256: str, key: str, store: BlobStore) -> str:
    from pixmo.ocr import ocr_text

    return ocr_text(store.get_bytes(key))


def image_context(db: Database, store: BlobStore, image_id: int) -> ImageContext:
    """The best caption and the OCR text (computed once per image and process) of an image.

    The OCR runs after the database session has ended: a first OCR of a large image takes seconds,
    and many questions at once would otherwise hold as many pool connections idle in a transaction.
    """
    with db.session() as session:
        image = session.get(Image, image_id)
        if image is None:
            raise NotFoundError(f"no image {image_id}")
        text, caption_id = best_caption(session, image_id)
        sha256, key = image.sha256, image.storage_key
    try:
        ocr = _ocr_cached(sha256, key, store)
    except ValidationError:
        ocr = ""
    return ImageContext(caption_id, text, ocr)


def exchange_for(session: Session, assignment: Assignment) -> list[QAPair]:
    """The questions asked in an assignment so far, oldest first."""
    return list(session.scalars(
        select(QAPair).where(QAPair.assignment_id == assignment.id, QAPair.source.in_(EXCHANGE_SOURCES))
        .order_by(QAPair.id)
    ))


def _clean(text: str, what: str) -> str:
    text = " ".join((text or "").split())
    if not text:
        raise ValidationError(f"The {what} is empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise ValidationError(f"The {what} is longer than {MAX_TEXT_CHARS} characters.")
    return text


def _open_lease(session: Session, assignment_id: int, user_id: int, kind: str = "ask") -> tuple[Assignment, Project]:
    assignment = get_assignment(session, assignment_id, user_id)
    project = session.get(Project, assignment.project_id)
    if project.kind != kind:
        raise ValidationError(f"this is a {project.kind} task, not {'an' if kind[0] in 'aeiou' else 'a'} {kind} task")
    _require_leased(assignment)
    return assignment, project


def _require_leased(assignment: Assignment) -> None:
    """A first look (no lock): a submitted or skipped task takes no more questions. A lapsed lease
    is settled by `claim_lease` when the answer is stored, as a submission's would be."""
    if assignment.status in ("submitted", "skipped"):
        raise LeaseError(f"this task was {assignment.status}; take the next one")


def ask_question(db: Database, store: BlobStore, model: AskModel, *, assignment_id: int, user_id: int,
                 question: str) -> QAPair:
    """Ask the model a question about the leased image; earlier pending questions are set aside."""
    question = _clean(question, "question")
    with db.session() as session:
        assignment, _ = _open_lease(session, assignment_id, user_id)
        image_id = assignment.image_id
    context = image_context(db, store, image_id)
    answer = model.answer(question, context.caption, context.ocr_text)  # slow: outside any transaction
    now = utcnow().isoformat()
    return _store_exchange(
        db, assignment_id, user_id, source="ask", question=question, answer=answer.text, writer=answer,
        caption_id=context.caption_id,
        messages=[{"role": "context", "caption": context.caption, "ocr_text": context.ocr_text, "at": now},
                  {"role": "user", "content": question, "at": now},
                  {"role": "assistant", "content": answer.text, "at": now}])


def check_marks(cfg: ProjectConfig, marks: Any) -> list[dict[str, Any]]:
    """The cleaned marks of a point explanation, ``[{"label", "points"}]`` (normalised, rounded);
    ValidationError says which mark is wrong and how."""
    if not isinstance(marks, list) or not marks:
        raise ValidationError("Mark at least one thing the answer should point at.")
    if len(marks) > MAX_MARKS:
        raise ValidationError(f"{len(marks)} marks is more than {MAX_MARKS}; an answer cites at most {MAX_MARKS}.")
    out = []
    for n, mark in enumerate(marks, start=1):
        if not isinstance(mark, dict):
            raise ValidationError(f"Mark [{n}] must be an object with a label and points.")
        if not isinstance(mark.get("label"), str):
            raise ValidationError(f"Mark [{n}]: the label must be text.")
        try:
            label = clean_label(mark["label"])
        except ValueError as exc:  # control characters, or too long
            raise ValidationError(f"Mark [{n}]: the label is refused: {exc}.") from None
        if not label:
            raise ValidationError(f"Mark [{n}]: say what it is (the label is empty).")
        points = mark.get("points")
        if not isinstance(points, list) or not points:
            raise ValidationError(f"Mark [{n}] ({label}) has no points: click where it is.")
        if len(points) > cfg.max_points:
            raise ValidationError(f"Mark [{n}] ({label}): {len(points)} points is more than this project's "
                                  f"limit of {cfg.max_points}.")
        try:
            out.append({"label": label, "points": stored_points(points)})
        except PointShapeError:
            raise ValidationError(f"Mark [{n}] ({label}): each point must be an [x, y] pair of numbers.") from None
        except ValidationError as exc:
            raise ValidationError(f"Mark [{n}] ({label}): a point lies outside the image ({exc}).") from None
    return out


def explain_points(db: Database, model: AskModel, *, assignment_id: int, user_id: int, question: str,
                   marks: Any) -> QAPair:
    """Have the model answer a question citing the annotator's marks on the leased image (a
    ``point_explain`` task); earlier pending answers are set aside. The stored answer has Molmo
    point text in place of each citation (PixMo-Point-Explanations' ``response``)."""
    question = _clean(question, "question")
    with db.session() as session:
        _, project = _open_lease(session, assignment_id, user_id, "point_explain")
        cfg = project_config(project)
    marks = check_marks(cfg, marks)
    explanation = model.explain(question, marks)  # slow: outside any transaction
    now = utcnow().isoformat()
    return _store_exchange(
        db, assignment_id, user_id, source="point_explain", question=question, answer=explanation.response,
        writer=explanation, caption_id=None,
        messages=[{"role": "context", "marks": marks, "at": now},
                  {"role": "user", "content": question, "at": now},
                  {"role": "assistant", "content": explanation.text, "at": now}])


def explanation_view(qa: QAPair) -> tuple[str | None, list[dict[str, Any]] | None]:
    """A point explanation as the annotator saw it: the model's text citing ``[n]``, and the marks
    (None, None for other QA)."""
    if qa.source != "point_explain" or not qa.messages:
        return None, None
    context = next((m for m in qa.messages if m.get("role") == "context"), {})
    said = [m["content"] for m in qa.messages if m.get("role") == "assistant"]
    return (said[-1] if said else None), context.get("marks")


def _next_idx(session: Session, caption_id: int, writer: Answer) -> int:
    """A free index for a QA row of this caption by this model and prompt ((caption, model, prompt, idx) is unique)."""
    return 1 + (session.scalar(select(func.max(QAPair.idx)).where(
        QAPair.caption_id == caption_id, QAPair.model == writer.model_id,
        QAPair.prompt_version == writer.prompt_version)) or 0)


def _store_exchange(db: Database, assignment_id: int, user_id: int, *, source: str, question: str, answer: str,
                    writer: Answer, caption_id: int | None, messages: list[dict[str, Any]]) -> QAPair:
    """A new pending exchange on the task, once the model has answered; the earlier pending ones are set aside."""
    for _ in range(5):
        try:
            with db.session(write_lock=True) as session:
                assignment = get_assignment(session, assignment_id, user_id, lock=True)
                # it may have been submitted or skipped (another tab), or its lease taken over, while the model answered
                claim_lease(session, assignment, utcnow())
                for old in exchange_for(session, assignment):
                    if old.status == "pending":
                        old.status = "rejected"
                idx = 0 if caption_id is None else _next_idx(session, caption_id, writer)
                qa = QAPair(
                    image_id=assignment.image_id, project_id=assignment.project_id, user_id=user_id,
                    assignment_id=assignment.id, caption_id=caption_id, idx=idx, source=source,
                    status="pending", question=question, answer=answer, model=writer.model_id,
                    prompt_version=writer.prompt_version, revisions=[], messages=messages,
                )
                session.add(qa)
                session.flush()
                return qa
        except IntegrityError:
            continue  # another exchange on this caption took the index; take the next one
    raise AskFailed("could not store the answer; try again")


def _pending(session: Session, qa_id: int, user_id: int, *, lock: bool = False) -> QAPair:
    stmt = select(QAPair).where(QAPair.id == qa_id, QAPair.user_id == user_id, QAPair.source.in_(EXCHANGE_SOURCES))
    qa = session.scalars(stmt.with_for_update() if lock else stmt).first()
    if qa is None:
        raise NotFoundError(f"no question {qa_id} of yours")
    if qa.status != "pending":
        raise ValidationError(f"this answer was {qa.status} already")
    return qa


def _lock_exchange(session: Session, qa_id: int, user_id: int, *, accepted_ok: bool = False) -> tuple[Assignment, QAPair]:
    """The task, then the pending question, locked in that order (as ask_question locks them): the
    other order deadlocked with a new question asked at the same moment (PostgreSQL). With
    ``accepted_ok``, a question already accepted is returned too (an accept sent again)."""
    assignment_id = session.scalar(
        select(QAPair.assignment_id).where(QAPair.id == qa_id, QAPair.user_id == user_id,
                                           QAPair.source.in_(EXCHANGE_SOURCES)))
    if assignment_id is None:
        raise NotFoundError(f"no question {qa_id} of yours")
    assignment = get_assignment(session, assignment_id, user_id, lock=True)
    if accepted_ok:
        qa = session.scalars(select(QAPair).where(QAPair.id == qa_id).with_for_update()).one()
        if qa.status == "accepted":
            return assignment, qa
    _require_leased(assignment)  # a skipped task's questions were set aside: say why, not "rejected"
    return assignment, _pending(session, qa_id, user_id, lock=True)


def revise_answer(db: Database, store: BlobStore, model: AskModel, *, qa_id: int, user_id: int,
                  feedback: str) -> QAPair:
    """The annotator says what is wrong; the model writes a new answer (the old one is kept)."""
    feedback = _clean(feedback, "feedback")
    with db.session() as session:
        qa = _pending(session, qa_id, user_id)
        if qa.source != "ask":
            raise ValidationError("A point explanation is not revised: change the question or the marks and ask again.")
        _open_lease(session, qa.assignment_id, user_id)
        if len(qa.revisions or []) >= MAX_REVISIONS:
            raise ValidationError(f"{MAX_REVISIONS} revisions already; accept the answer or ask a new question")
        question, previous, image_id = qa.question, qa.answer, qa.image_id
        asked_from = next((m for m in qa.messages or [] if m.get("role") == "context"), None)
    if asked_from is not None:
        # the caption and OCR text the question was answered from: the row's lineage (caption_id,
        # its context message) names them, and a caption written since must not slip in unrecorded
        caption, ocr_text = asked_from.get("caption") or "", asked_from.get("ocr_text")
    else:
        context = image_context(db, store, image_id)
        caption, ocr_text = context.caption, context.ocr_text
    answer = model.revise(question, caption, ocr_text, previous, feedback)
    now = utcnow().isoformat()
    for _ in range(5):
        try:
            with db.session(write_lock=True) as session:
                assignment, qa = _lock_exchange(session, qa_id, user_id)
                claim_lease(session, assignment, utcnow())  # still this annotator's task
                # what the model answered may have changed since (another tab revised it): feedback on
                # an answer the annotator did not see, or a revision past the limit, is not stored
                if qa.answer != previous or len(qa.revisions or []) >= MAX_REVISIONS:
                    raise LeaseError("this answer changed while the model wrote a new one (another tab?); look at it again")
                # each entry keeps the answer it replaces with the model and prompt that wrote that answer
                qa.revisions = [*(qa.revisions or []), {"answer": qa.answer, "feedback": feedback, "at": now,
                                                        "model": qa.model, "prompt_version": qa.prompt_version}]
                qa.messages = [*(qa.messages or []), {"role": "user", "content": feedback, "kind": "feedback", "at": now},
                               {"role": "assistant", "content": answer.text, "at": now}]
                qa.answer = answer.text
                # the row names the writer of its current answer: the lineage the export reads
                if (qa.model, qa.prompt_version) != (answer.model_id, answer.prompt_version):
                    # the free index first: the query would flush the row's new writer with its old index
                    idx = qa.idx if qa.caption_id is None else _next_idx(session, qa.caption_id, answer)
                    qa.model, qa.prompt_version, qa.idx = answer.model_id, answer.prompt_version, idx
                session.flush()
                return qa
        except IntegrityError:
            continue  # another exchange on this caption took the index; take the next one
    raise AskFailed("could not store the answer; try again")


def accept_answer(db: Database, *, qa_id: int, user_id: int, active_seconds: float | None = None,
                  now: dt.datetime | None = None, shown: str | None = None) -> QAPair:
    """Accept the current answer: the pair becomes an accepted QA row and the task is submitted.

    ``shown``, the answer the annotator saw: a LeaseError (409) when the row holds another (a revision
    whose reply was lost on the way, another tab), never an answer nobody read. Sent again (a retry
    after a lost response), it returns the accepted row as it is.
    """
    with db.session(write_lock=True) as session:
        assignment, qa = _lock_exchange(session, qa_id, user_id, accepted_ok=True)
        if shown is not None and shown != qa.answer:
            raise LeaseError("the answer changed since you saw it (a revision finished after all, or another tab): "
                             "read it again before you accept it")
        if qa.status == "accepted":
            return qa
        now = now or utcnow()  # after the locks: waiting for them may outlast the lease
        claim_lease(session, assignment, now)
        qa.status = "accepted"
        mark_submitted(assignment, active_seconds, now)
        session.flush()
        return qa
