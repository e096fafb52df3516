"""Review: the reviewer's queue page and verdicts (approve, reject with a reason, flag)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from annotation_app.deps import DbDep, Reviewer, StoreDep
from annotation_app.schemas import ReviewIn, ReviewOut
from annotation_app.templating import blob_url, render
from pixmo.projects import list_projects
from pixmo.reviews import record_review, review_queue

router = APIRouter(tags=["reviews"])


def _queue(db, store, reviewer_id: int, project_id: int | None, limit: int) -> list[dict]:  # noqa: ANN001
    with db.session() as session:
        items = review_queue(session, reviewer_id, project_id, limit)
    out = []
    for it in items:
        d = dict(it.__dict__)
        d["image_url"] = blob_url(store, it.image_key)
        if it.target_type == "recording":
            d["details"] = {**it.details, "audio_url": blob_url(store, it.details["storage_key"])}
        d["created_at"] = str(it.created_at)
        out.append(d)
    return out


@router.get("/review", include_in_schema=False)
def review_page(request: Request, db: DbDep, store: StoreDep, user: Reviewer, project: int | None = None):
    items = _queue(db, store, user.id, project, 10)
    with db.session() as session:
        projects = [p for p, _ in list_projects(session)]
    return render(request, "review.html", items=items, projects=projects, project_id=project)


@router.get("/api/reviews/queue")
def api_queue(db: DbDep, store: StoreDep, user: Reviewer, project: int | None = None, limit: int = 20) -> list[dict]:
    """Unreviewed submissions, oldest first (never the reviewer's own)."""
    return _queue(db, store, user.id, project, max(1, min(limit, 100)))


@router.post("/api/reviews", response_model=ReviewOut, status_code=201)
def api_review(body: ReviewIn, db: DbDep, user: Reviewer):
    """Record a verdict; a rejection needs a reason and returns the image to the queue."""
    review = record_review(db, user.id, body.target_type, body.target_id, body.verdict, body.reason)
    return ReviewOut(id=review.id, target_type=review.target_type, target_id=review.target_id,
                     verdict=review.verdict, reason=review.reason)
