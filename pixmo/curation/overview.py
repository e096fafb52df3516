"""The overview: per project, how far its images got (the funnel), and collection over time.

Every number is an aggregate computed in SQL (``count(DISTINCT image_id)`` per project), so the
cost grows with the index sizes, never with rows loaded into Python.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Date, Select, distinct, exists, func, literal, select, union_all
from sqlalchemy.orm import Session

from pixmo.curation.sql import day_of, in_project, review_in_project, reviewed_items
from pixmo.errors import ValidationError
from pixmo.db.models import (
    EXCHANGE_SOURCES,
    Assignment,
    Caption,
    Export,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
)

# Which stages a project of each kind goes through, in order.
FUNNEL_STAGES: dict[str, tuple[str, ...]] = {
    "caption": ("images", "assigned", "recorded", "transcribed", "captioned", "reviewed", "exported"),
    "points": ("images", "assigned", "pointed", "reviewed", "exported"),
    "ask": ("images", "assigned", "answered", "reviewed", "exported"),
    # its marks live in the accepted answer (they are not exhaustive point sets)
    "point_explain": ("images", "assigned", "answered", "reviewed", "exported"),
}

STAGE_HELP = {
    "images": "images in the project",
    "assigned": "images leased to an annotator at least once",
    "recorded": "images with at least one recording",
    "transcribed": "images with at least one successful transcript",
    "captioned": "images with at least one successful caption",
    "pointed": "images with at least one point set",
    "answered": "images with at least one accepted QA pair",
    "reviewed": "images with a review of any of their items in this project",
    "exported": "images in the largest export snapshot of this project",
}

# Human work over time; pipeline outputs (transcripts, captions) show in the funnel instead.
SERIES = ("submissions", "recordings", "point_sets", "qa_pairs", "reviews")


@dataclass
class FunnelStage:
    """One step of a project's funnel: how many images reached it."""

    name: str
    count: int
    pct_of_images: float | None
    pct_of_previous: float | None


@dataclass
class ProjectFunnel:
    """The funnel of one project."""

    project_id: int
    name: str
    kind: str
    stages: list[FunnelStage] = field(default_factory=list)

    def count(self, stage: str) -> int:
        return next((s.count for s in self.stages if s.name == stage), 0)


def _pct(n: int, of: int) -> float | None:
    return round(100.0 * n / of, 1) if of else None


def _by_project(session: Session, stmt: Select) -> dict[int, int]:
    return {pid: int(n) for pid, n in session.execute(stmt) if pid is not None}


def _distinct_images(session: Session, model, project_id: int | None, *where) -> dict[int, int]:  # noqa: ANN001
    stmt = (select(model.project_id, func.count(distinct(model.image_id)))
            .where(*where, *in_project(model.project_id, project_id)).group_by(model.project_id))
    return _by_project(session, stmt)


def _reviewed(session: Session, project_id: int | None) -> dict[int, int]:
    """Distinct images per project with a review of any of their items in that project."""
    parts = reviewed_items(lambda item: (item.project_id.label("project_id"), item.image_id.label("image_id")), project_id)
    both = union_all(*parts).subquery()
    stmt = select(both.c.project_id, func.count(distinct(both.c.image_id))).group_by(both.c.project_id)
    return _by_project(session, stmt)


def exported_count(project_name: str, filters: dict[str, Any], counts: dict[str, Any]) -> int | None:
    """Images of ``project_name`` in one export snapshot, read from its ``counts``/``filters``.

    Exporters record either a per-project breakdown (``counts["projects"][name]``) or a snapshot
    filtered to projects (``filters["project"]`` / ``filters["projects"]``) with a total
    (``counts["images"]`` or ``counts["samples"]``). None when the snapshot says nothing about it.
    """
    per_project = counts.get("projects") if isinstance(counts, dict) else None
    if isinstance(per_project, dict) and project_name in per_project:
        value = per_project[project_name]
        if isinstance(value, dict):
            value = value.get("images", value.get("samples"))
        return int(value) if isinstance(value, (int, float)) else None
    named = filters.get("projects", filters.get("project")) if isinstance(filters, dict) else None
    if isinstance(named, str):
        named = [named]
    if isinstance(named, list) and named == [project_name]:
        total = counts.get("images", counts.get("samples"))
        return int(total) if isinstance(total, (int, float)) else None
    return None


def _exported(session: Session, projects: dict[int, str]) -> dict[int, int]:
    out: dict[int, int] = {}
    # Snapshots are few (one row per export run), so reading their small JSON columns is cheap.
    for filters, counts in session.execute(select(Export.filters, Export.counts)):
        for pid, name in projects.items():
            n = exported_count(name, filters or {}, counts or {})
            if n is not None:
                out[pid] = max(out.get(pid, 0), n)
    return out


def funnel(session: Session, project_id: int | None = None) -> list[ProjectFunnel]:
    """Per project (or one), images → assigned → … → reviewed → exported, with percentages."""
    stmt = select(Project.id, Project.name, Project.kind).where(*in_project(Project.id, project_id)).order_by(Project.id)
    projects = list(session.execute(stmt))
    if not projects:
        return []
    ok_transcripts = exists(
        select(literal(1)).where(Transcript.recording_id == Recording.id, Transcript.status == "ok")
    )
    images_stmt = (select(ProjectImage.project_id, func.count())
                   .where(*in_project(ProjectImage.project_id, project_id)).group_by(ProjectImage.project_id))
    counts = {
        "images": _by_project(session, images_stmt),
        "assigned": _distinct_images(session, Assignment, project_id),
        "recorded": _distinct_images(session, Recording, project_id),
        "transcribed": _distinct_images(session, Recording, project_id, ok_transcripts),
        "captioned": _distinct_images(session, Caption, project_id, Caption.status == "ok"),
        "pointed": _distinct_images(session, PointSet, project_id),
        "answered": _distinct_images(session, QAPair, project_id, QAPair.status == "accepted"),
        "reviewed": _reviewed(session, project_id),
        "exported": _exported(session, {pid: name for pid, name, _ in projects}),
    }
    out = []
    for pid, name, kind in projects:
        pf = ProjectFunnel(pid, name, kind)
        images = counts["images"].get(pid, 0)
        previous = None
        for stage in FUNNEL_STAGES.get(kind, FUNNEL_STAGES["caption"]):
            n = counts[stage].get(pid, 0)
            pf.stages.append(FunnelStage(stage, n, _pct(n, images), None if previous is None else _pct(n, previous)))
            previous = n
        out.append(pf)
    return out


def collection_over_time(session: Session, project_id: int | None = None, since: str | None = None) -> list[dict[str, Any]]:
    """Rows ``{day, series, count}``: what people made per UTC day (submitted assignments, recordings,
    point sets, QA pairs, reviews).

    ``since`` (``YYYY-MM-DD``) keeps the days from then on.
    """
    sources = [
        ("submissions", Assignment.submitted_at, Assignment.project_id, Assignment.status == "submitted"),
        ("recordings", Recording.created_at, Recording.project_id, None),
        ("point_sets", PointSet.created_at, PointSet.project_id, None),
        # an annotator's accepted answer, not the model's CapQA pairs nor answers set aside or still open
        ("qa_pairs", QAPair.created_at, QAPair.project_id, QAPair.source.in_(EXCHANGE_SOURCES) & (QAPair.status == "accepted")),
    ]
    rows: list[dict[str, Any]] = []
    try:
        first_day = literal(dt.date.fromisoformat(since), Date) if since else None
    except ValueError as exc:
        raise ValidationError(f"since must be a YYYY-MM-DD date, not {since!r}") from exc

    def collect(series: str, stmt: Select, day) -> None:  # noqa: ANN001
        if first_day is not None:
            stmt = stmt.where(day >= first_day)
        for d, n in session.execute(stmt.group_by(day).order_by(day)):
            if d is not None:
                rows.append({"day": str(d), "series": series, "count": int(n)})

    for series, ts, project_col, where in sources:
        day = day_of(session, ts)
        stmt = select(day, func.count()).where(ts.is_not(None))
        if where is not None:
            stmt = stmt.where(where)
        stmt = stmt.where(*in_project(project_col, project_id))
        collect(series, stmt, day)

    day = day_of(session, Review.created_at)
    # a verdict on a whole task is one judgement, also written on each item: counted on the items
    stmt = select(day, func.count()).select_from(Review).where(Review.target_type != "assignment",
                                                               *review_in_project(project_id))
    collect("reviews", stmt, day)
    order = {s: i for i, s in enumerate(SERIES)}
    rows.sort(key=lambda r: (r["day"], order[r["series"]]))
    return rows
