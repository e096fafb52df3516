"""Review: the reviewer's queue page and verdicts (approve, reject with a reason, flag)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from annotation_app.deps import DbDep, Reviewer, StoreDep
from annotation_app.schemas import ReviewIn, ReviewOut
from annotation_app.templating import blob_url, render
from pixmo.errors import ValidationError
from pixmo.db.models import Image
from pixmo.projects import list_projects
from pixmo.renditions import browser_key
from pixmo.reviews import record_review, review_queue

router = APIRouter(tags=["reviews"])


def _queue(db, store, reviewer_id: int, project_id: int | None, limit: int) -> list[dict]:  # noqa: ANN001
    with db.session() as session:
        items = review_queue(session, reviewer_id, project_id, limit)
        # the queue's query loaded each Image: get() finds it without another query
        shown = {it.image_id: browser_key(store, session.get(Image, it.image_id)) for it in items}
    out = []
    for it in items:
        d = dict(it.__dict__)
        d["image_url"] = blob_url(store, shown[it.image_id])
        if it.target_type == "recording":
            d["details"] = {**it.details, "audio_url": blob_url(store, it.details["storage_key"])}
        d["created_at"] = str(it.created_at)
        out.append(d)
    return out


def _project_id(project: str | None) -> int | None:
    """The project filter: empty (the "All projects" choice sends ``?project=``) means every project."""
    if project is None or not project.strip():
        return None
    try:
        return int(project)
    except ValueError:
        raise ValidationError(f"project must be a project id, not {project!r}") from None


@router.get("/review", include_in_schema=False)
def review_page(request: Request, db: DbDep, store: StoreDep, user: Reviewer, project: str | None = None):
    project = _project_id(project)
    items = _queue(db, store, user.id, project, 10)
    with db.session() as session:
        projects = [p for p, _ in list_projects(session)]
    return render(request, "review.html", items=items, projects=projects, project_id=project)


@router.get("/api/reviews/queue")
def api_queue(db: DbDep, store: StoreDep, user: Reviewer, project: str | None = None, limit: int = 20) -> list[dict]:
    """Unreviewed submissions, oldest first (never the reviewer's own); ``project``: a project id, or empty for all."""
    return _queue(db, store, user.id, _project_id(project), max(1, min(limit, 100)))


@router.post("/api/reviews", response_model=ReviewOut, status_code=201)
def api_review(body: ReviewIn, db: DbDep, user: Reviewer):
    """Record a verdict; a rejection needs a reason and returns the image to the queue."""
    review = record_review(db, user.id, body.target_type, body.target_id, body.verdict, body.reason)
    return ReviewOut(id=review.id, target_type=review.target_type, target_id=review.target_id,
                     verdict=review.verdict, reason=review.reason)
