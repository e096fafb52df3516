"""Counts of what was collected, overall and per project."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixmo.db.models import (
    Assignment,
    Caption,
    Image,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
    User,
)


def _count(session: Session, stmt) -> int:  # noqa: ANN001
    return int(session.scalar(stmt) or 0)


def _per_project(session: Session, model, column) -> dict[int, int]:  # noqa: ANN001
    stmt = select(column, func.count()).select_from(model).group_by(column)
    return {pid: n for pid, n in session.execute(stmt) if pid is not None}


def collect_stats(session: Session) -> dict[str, Any]:
    """Totals per table and, per project, images, assignments by status and annotations."""
    totals = {
        "users": _count(session, select(func.count()).select_from(User)),
        "projects": _count(session, select(func.count()).select_from(Project)),
        "images": _count(session, select(func.count()).select_from(Image)),
        "recordings": _count(session, select(func.count()).select_from(Recording)),
        "transcripts": _count(session, select(func.count()).select_from(Transcript)),
        "captions": _count(session, select(func.count()).select_from(Caption)),
        "point_sets": _count(session, select(func.count()).select_from(PointSet)),
        "qa_pairs": _count(session, select(func.count()).select_from(QAPair)),
        "reviews": _count(session, select(func.count()).select_from(Review)),
        "audio_seconds": round(float(session.scalar(select(func.sum(Recording.duration_s))) or 0.0), 1),
    }
    images = _per_project(session, ProjectImage, ProjectImage.project_id)
    recordings = _per_project(session, Recording, Recording.project_id)
    captions = _per_project(session, Caption, Caption.project_id)
    points = _per_project(session, PointSet, PointSet.project_id)
    qa = _per_project(session, QAPair, QAPair.project_id)
    assignments: dict[int, dict[str, int]] = {}
    for pid, status, n in session.execute(
        select(Assignment.project_id, Assignment.status, func.count()).group_by(Assignment.project_id, Assignment.status)
    ):
        assignments.setdefault(pid, {})[status] = n
    projects = []
    for project in session.scalars(select(Project).order_by(Project.id)):
        projects.append(
            {
                "name": project.name,
                "kind": project.kind,
                "images": images.get(project.id, 0),
                "assignments": assignments.get(project.id, {}),
                "recordings": recordings.get(project.id, 0),
                "captions": captions.get(project.id, 0),
                "point_sets": points.get(project.id, 0),
                "qa_pairs": qa.get(project.id, 0),
            }
        )
    return {"totals": totals, "projects": projects}
