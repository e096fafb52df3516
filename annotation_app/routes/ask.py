"""Exchanges with the model: ask a question (PixMo-AskModelAnything), then accept the answer or have
it revised; or mark things and have the model answer citing them (PixMo-Point-Explanations)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from annotation_app.deps import AnyUser, DbDep, StoreDep
from annotation_app.schemas import AcceptIn, AskIn, ExplainIn, QAOut, ReviseIn
from pixmo.ask import AskModel, accept_answer, ask_question, explanation_view, explain_points, revise_answer
from pixmo.db.models import QAPair

router = APIRouter(tags=["ask"])


def _model(request: Request) -> AskModel:
    return request.app.state.ask_model


def _out(qa: QAPair) -> QAOut:
    text, marks = explanation_view(qa)
    return QAOut(id=qa.id, question=qa.question, answer=qa.answer, status=qa.status, revisions=qa.revisions or [],
                 model=qa.model, text=text, marks=marks)


@router.post("/api/assignments/{assignment_id}/ask", response_model=QAOut, status_code=201)
async def ask(request: Request, assignment_id: int, body: AskIn, db: DbDep, store: StoreDep, user: AnyUser):
    """Ask the model a question about the leased image; it answers from the caption and OCR text."""
    qa = await run_in_threadpool(ask_question, db, store, _model(request), assignment_id=assignment_id,
                                 user_id=user.id, question=body.question)
    return _out(qa)


@router.post("/api/assignments/{assignment_id}/explain", response_model=QAOut, status_code=201)
async def explain(request: Request, assignment_id: int, body: ExplainIn, db: DbDep, user: AnyUser):
    """A point-explanation task: the model answers the question citing the marked things as [1], [2], ..."""
    qa = await run_in_threadpool(explain_points, db, _model(request), assignment_id=assignment_id, user_id=user.id,
                                 question=body.question, marks=body.marks)
    return _out(qa)


@router.post("/api/qa/{qa_id}/revise", response_model=QAOut)
async def revise(request: Request, qa_id: int, body: ReviseIn, db: DbDep, store: StoreDep, user: AnyUser):
    """Say what is wrong with the answer; the model writes a corrected one."""
    qa = await run_in_threadpool(revise_answer, db, store, _model(request), qa_id=qa_id, user_id=user.id,
                                 feedback=body.feedback)
    return _out(qa)


@router.post("/api/qa/{qa_id}/accept", response_model=QAOut)
def accept(qa_id: int, body: AcceptIn, db: DbDep, user: AnyUser):
    """Accept the answer: the pair becomes a QA row and the task is submitted."""
    return _out(accept_answer(db, qa_id=qa_id, user_id=user.id, active_seconds=body.active_seconds, shown=body.answer))
