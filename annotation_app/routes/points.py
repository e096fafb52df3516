"""Point sets: submitting the points of one referring expression (or "not present")."""

from __future__ import annotations

from fastapi import APIRouter

from annotation_app.deps import AnyUser, DbDep
from annotation_app.schemas import PointSetOut, PointsIn
from pixmo.submissions import submit_points

router = APIRouter(tags=["points"])


@router.post("/api/assignments/{assignment_id}/points", response_model=PointSetOut, status_code=201)
def post_points(assignment_id: int, body: PointsIn, db: DbDep, user: AnyUser):
    """Submit a pointing task: normalised [x, y] points in [0, 1], or ``not_present``."""
    ps = submit_points(
        db, assignment_id=assignment_id, user_id=user.id, label=body.label, points=body.points,
        not_present=body.not_present, method=body.method, active_seconds=body.active_seconds,
    )
    return PointSetOut(id=ps.id, assignment_id=ps.assignment_id, label=ps.label, points=ps.points,
                       not_present=ps.not_present, method=ps.method)
