"""Browsing images with filters, one keyset page at a time, and everything about one image.

Pages use keyset pagination on ``images.id`` (``WHERE id > :after ORDER BY id LIMIT n``), so page
1000 costs what page 1 costs; every filter is an ``EXISTS`` on an indexed foreign key. Per-item
summaries are computed for the ids of one page only.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, func, literal, not_, or_, select
from sqlalchemy.orm import Session, aliased

from pixmo.curation.sql import (
    KNOWN_FLAGS,
    contains_text,
    has_any_flag,
    has_flag,
    in_project,
    is_current_review,
    keyset_page,
    review_in_project,
)
from pixmo.db.models import (
    EXCHANGE_SOURCES,
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
from pixmo.errors import NotFoundError, ValidationError

STATUSES = (
    "unassigned", "assigned", "recorded", "transcribed", "captioned", "pointed", "answered",
    "unreviewed", "reviewed", "approved", "rejected", "flagged", "gold",
)
ANY_FLAG = "any"


@dataclass
class BrowseFilters:
    """What to show: every field is optional and they combine with AND."""

    project_id: int | None = None
    status: str | None = None
    flag: str | None = None  # a flag name, or "any"
    annotator_id: int | None = None
    text: str | None = None  # substring of a caption, case-insensitive
    newest_first: bool = False

    def validate(self) -> BrowseFilters:
        if self.status is not None and self.status not in STATUSES:
            raise ValidationError(f"status must be one of {', '.join(STATUSES)}, not {self.status!r}")
        if self.flag is not None and (not isinstance(self.flag, str) or not self.flag):
            # any stored name (flags may be set by hand: "needs review"); compared as a bound value
            raise ValidationError(f"flag must be a flag name, not {self.flag!r}")
        return self


@dataclass
class BrowseItem:
    """One image in a page of results, with counts of what it has."""

    image_id: int
    sha256: str
    width: int
    height: int
    mime: str
    created_at: Any
    recordings: int = 0
    captions: int = 0
    point_sets: int = 0
    qa_pairs: int = 0
    reviews: int = 0
    verdicts: dict[str, int] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    caption: str = ""


@dataclass
class BrowsePage:
    """One page; pass ``next_after`` as ``after_id`` for the next one (None: this was the last)."""

    items: list[BrowseItem]
    next_after: int | None


def _status_clause(status: str, project_id: int | None) -> ColumnElement[bool]:
    img = Image.id
    if status in ("unassigned", "assigned"):
        clause = exists(select(literal(1)).where(Assignment.image_id == img, *in_project(Assignment.project_id, project_id)))
        return clause if status == "assigned" else not_(clause)
    if status == "recorded":
        return exists(select(literal(1)).where(Recording.image_id == img, *in_project(Recording.project_id, project_id)))
    if status == "transcribed":
        return exists(
            select(literal(1)).select_from(Recording).join(Transcript, Transcript.recording_id == Recording.id)
            .where(Recording.image_id == img, Transcript.status == "ok", *in_project(Recording.project_id, project_id))
        )
    if status == "captioned":
        return exists(select(literal(1)).where(Caption.image_id == img, Caption.status == "ok",
                                               *in_project(Caption.project_id, project_id)))
    if status == "pointed":
        return exists(select(literal(1)).where(PointSet.image_id == img, *in_project(PointSet.project_id, project_id)))
    if status == "answered":
        return exists(select(literal(1)).where(QAPair.image_id == img, QAPair.status == "accepted",
                                               *in_project(QAPair.project_id, project_id)))
    if status in ("reviewed", "unreviewed"):
        clause = exists(select(literal(1)).where(Review.image_id == img, *review_in_project(project_id)))
        return clause if status == "reviewed" else not_(clause)
    if status == "gold":
        pi = aliased(ProjectImage)  # the outer query may join project_images itself
        return exists(select(literal(1)).where(pi.image_id == img, pi.is_gold.is_(True), *in_project(pi.project_id, project_id)))
    # approved / rejected / flagged: an item of the image whose current verdict is that
    return exists(select(literal(1)).where(Review.image_id == img, Review.verdict == status, is_current_review(Review),
                                           *review_in_project(project_id)))


def _flag_clause(session: Session, flag: str, project_id: int | None) -> ColumnElement[bool]:
    def flagged(column) -> ColumnElement[bool]:  # noqa: ANN001
        # "has any flag" first: it matches the partial index of flagged rows, so only those are read
        if flag == ANY_FLAG:
            return has_any_flag(session, column)
        return and_(has_any_flag(session, column), has_flag(session, column, flag))

    transcript = exists(
        select(literal(1)).select_from(Recording).join(Transcript, Transcript.recording_id == Recording.id)
        .where(Recording.image_id == Image.id, flagged(Transcript.flags), *in_project(Recording.project_id, project_id))
    )
    caption = exists(select(literal(1)).where(Caption.image_id == Image.id, flagged(Caption.flags),
                                              *in_project(Caption.project_id, project_id)))
    return or_(transcript, caption)


def _annotator_clause(user_id: int, project_id: int | None) -> ColumnElement[bool]:
    return or_(*(
        exists(select(literal(1)).where(model.image_id == Image.id, model.user_id == user_id,
                                        *in_project(model.project_id, project_id)))
        for model in (Assignment, Recording, PointSet, QAPair)
    ))


def browse_images(session: Session, filters: BrowseFilters | None = None, after_id: int | None = None,
                  limit: int = 50) -> BrowsePage:
    """One page of images matching ``filters``, after the image id ``after_id`` (keyset)."""
    f = (filters or BrowseFilters()).validate()
    if f.project_id is not None:
        # Walk the (project_id, image_id) unique index, already in image order.
        key = ProjectImage.image_id
        stmt = select(Image).join(ProjectImage, and_(ProjectImage.image_id == Image.id, ProjectImage.project_id == f.project_id))
    else:
        key = Image.id
        stmt = select(Image)
    if f.status:
        stmt = stmt.where(_status_clause(f.status, f.project_id))
    if f.flag:
        stmt = stmt.where(_flag_clause(session, f.flag, f.project_id))
    if f.annotator_id is not None:
        stmt = stmt.where(_annotator_clause(f.annotator_id, f.project_id))
    if f.text and f.text.strip():
        stmt = stmt.where(exists(select(literal(1)).where(
            Caption.image_id == Image.id, contains_text(session, Caption.text, f.text.strip()),
            *in_project(Caption.project_id, f.project_id),
        )))
    images, more = keyset_page(session, stmt, key, after_id, limit, descending=f.newest_first, scalars=True)
    items = _summaries(session, images, f.project_id)
    return BrowsePage(items, images[-1].id if more else None)


def _count_by_image(session: Session, model, ids: list[int], project_id: int | None, *where) -> dict[int, int]:  # noqa: ANN001
    stmt = select(model.image_id, func.count()).where(model.image_id.in_(ids), *in_project(model.project_id, project_id),
                                                      *where)
    return dict(session.execute(stmt.group_by(model.image_id)).all())


def _summaries(session: Session, images: list[Image], project_id: int | None) -> list[BrowseItem]:
    ids = [im.id for im in images]
    if not ids:
        return []
    recordings = _count_by_image(session, Recording, ids, project_id)
    captions = _count_by_image(session, Caption, ids, project_id, Caption.status == "ok")  # not failed rewrites
    point_sets = _count_by_image(session, PointSet, ids, project_id)
    qa = _count_by_image(session, QAPair, ids, project_id, QAPair.status == "accepted")  # not answers set aside or open
    # a verdict on a whole task is written on each of its items too: counted there, once
    of_project = (*review_in_project(project_id), Review.target_type != "assignment")
    reviews = dict(session.execute(select(Review.image_id, func.count()).where(Review.image_id.in_(ids), *of_project)
                                   .group_by(Review.image_id)).all())
    verdicts: dict[int, dict[str, int]] = defaultdict(dict)
    for image_id, verdict, n in session.execute(
        select(Review.image_id, Review.verdict, func.count())
        .where(Review.image_id.in_(ids), is_current_review(Review), *of_project).group_by(Review.image_id, Review.verdict)
    ):
        verdicts[image_id][verdict] = int(n)
    flags: dict[int, set[str]] = defaultdict(set)
    for image_id, row_flags in session.execute(
        select(Recording.image_id, Transcript.flags).join(Transcript, Transcript.recording_id == Recording.id)
        .where(Recording.image_id.in_(ids), *in_project(Recording.project_id, project_id))
    ):
        flags[image_id].update(row_flags or [])
    first_caption: dict[int, str] = {}
    for image_id, cflags, text in session.execute(
        select(Caption.image_id, Caption.flags, Caption.text)
        .where(Caption.image_id.in_(ids), Caption.status == "ok", *in_project(Caption.project_id, project_id))
        .order_by(Caption.id)
    ):
        flags[image_id].update(cflags or [])
        first_caption.setdefault(image_id, text)  # a failed rewrite has no text to show
    return [
        BrowseItem(
            im.id, im.sha256, im.width, im.height, im.mime, im.created_at,
            recordings.get(im.id, 0), captions.get(im.id, 0), point_sets.get(im.id, 0), qa.get(im.id, 0),
            reviews.get(im.id, 0), dict(verdicts.get(im.id, {})), sorted(flags.get(im.id, set())),
            _snippet(first_caption.get(im.id, "")),
        )
        for im in images
    ]


def _snippet(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _columns(row: Any, *names: str) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


def image_detail(session: Session, image_id: int) -> dict[str, Any]:
    """Everything about one image: projects, point sets, recordings with transcripts, captions,
    QA pairs, assignments and the review history (oldest first), with user names."""
    image = session.get(Image, image_id)
    if image is None:
        raise NotFoundError(f"no image with id {image_id}")
    names: dict[int, str | None] = {}

    def username(user_id: int | None) -> str | None:
        if user_id is None:
            return None
        if user_id not in names:
            names[user_id] = session.scalar(select(User.username).where(User.id == user_id))
        return names[user_id]

    projects = [
        {"project_id": p.id, "name": p.name, "kind": p.kind, "is_gold": pi.is_gold, "gold_answer": pi.gold_answer}
        for pi, p in session.execute(
            select(ProjectImage, Project).join(Project, Project.id == ProjectImage.project_id)
            .where(ProjectImage.image_id == image_id).order_by(Project.id)
        )
    ]
    point_sets = [
        {**_columns(ps, "id", "project_id", "label", "points", "not_present", "method", "created_at"), "annotator": username(ps.user_id)}
        for ps in session.scalars(select(PointSet).where(PointSet.image_id == image_id).order_by(PointSet.id))
    ]
    recordings = []
    for rec in session.scalars(select(Recording).where(Recording.image_id == image_id).order_by(Recording.id)):
        transcripts = [
            _columns(t, "id", "asr_model", "status", "error", "text", "language", "metrics", "flags", "created_at")
            for t in session.scalars(select(Transcript).where(Transcript.recording_id == rec.id).order_by(Transcript.id))
        ]
        recordings.append({
            **_columns(rec, "id", "project_id", "storage_key", "sha256", "mime", "duration_s", "bytes", "created_at"),
            "annotator": username(rec.user_id), "transcripts": transcripts,
        })
    captions = [
        _columns(c, "id", "project_id", "kind", "status", "text", "model", "prompt_version", "produced_by",
                 "source_transcript_ids", "faithfulness", "flags", "created_at")
        for c in session.scalars(select(Caption).where(Caption.image_id == image_id).order_by(Caption.id))
    ]
    qa_pairs = [
        {**_columns(q, "id", "project_id", "source", "status", "question", "answer", "model", "prompt_version",
                    "revisions", "created_at"), "annotator": username(q.user_id)}
        for q in session.scalars(select(QAPair).where(QAPair.image_id == image_id).order_by(QAPair.id))
    ]
    assignments = [
        {**_columns(a, "id", "project_id", "status", "is_gold", "active_seconds", "submitted_at", "skip_reason"),
         "annotator": username(a.user_id)}
        for a in session.scalars(select(Assignment).where(Assignment.image_id == image_id).order_by(Assignment.id))
    ]
    reviews = [
        {**_columns(r, "id", "target_type", "target_id", "verdict", "reason", "created_at"), "reviewer": username(r.reviewer_id)}
        for r in session.scalars(select(Review).where(Review.image_id == image_id).order_by(Review.id))
    ]
    current: dict[tuple[str, int], str] = {}
    for r in reviews:
        current[(r["target_type"], r["target_id"])] = r["verdict"]
    return {
        "image": _columns(image, "id", "sha256", "storage_key", "width", "height", "mime", "bytes", "source_url",
                          "source", "created_at"),
        "projects": projects, "point_sets": point_sets, "recordings": recordings, "captions": captions,
        "qa_pairs": qa_pairs, "assignments": assignments, "reviews": reviews,
        "current_verdicts": {f"{t}:{i}": v for (t, i), v in current.items()},
    }


def review_targets(detail: dict[str, Any]) -> list[tuple[str, int, str]]:
    """The reviewable items of an image detail as ``(target_type, target_id, description)``."""
    out: list[tuple[str, int, str]] = []
    for rec in detail["recordings"]:
        out.append(("recording", rec["id"], f"recording #{rec['id']} by {rec['annotator']} ({rec['duration_s']:.1f} s)"))
        for t in rec["transcripts"]:
            out.append(("transcript", t["id"], f"transcript #{t['id']} ({t['asr_model']})"))
    for c in detail["captions"]:
        out.append(("caption", c["id"], f"{c['kind']} caption #{c['id']} ({c['model']})"))
    for ps in detail["point_sets"]:
        out.append(("point_set", ps["id"], f"point set #{ps['id']} '{ps['label']}' by {ps['annotator']}"))
    for q in detail["qa_pairs"]:
        if q["source"] in EXCHANGE_SOURCES and q["status"] != "accepted":
            continue  # only the accepted answer of an exchange with the model is reviewed (add_review refuses others)
        out.append(("qa_pair", q["id"], f"QA #{q['id']} ({q['source']}): {_snippet(q['question'], 60)}"))
    for a in detail["assignments"]:
        if a["status"] == "submitted":
            out.append(("assignment", a["id"], f"assignment #{a['id']} by {a['annotator']}"))
    return out


def filter_options(session: Session) -> dict[str, Any]:
    """Choices for the browse filters: projects, annotators (and others with work), statuses and flag names."""
    projects = [
        {"id": pid, "name": name, "kind": kind}
        for pid, name, kind in session.execute(select(Project.id, Project.name, Project.kind).order_by(Project.name))
    ]
    annotators = [
        {"id": uid, "username": name}
        for uid, name in session.execute(
            # every annotator, and anyone else with work (each EXISTS probes a user_id index)
            select(User.id, User.username)
            .where((User.role == "annotator")
                   | exists(select(literal(1)).where(Assignment.user_id == User.id))
                   | exists(select(literal(1)).where(Recording.user_id == User.id))
                   | exists(select(literal(1)).where(PointSet.user_id == User.id)))
            .order_by(User.username)
        )
    ]
    return {"projects": projects, "annotators": annotators, "statuses": list(STATUSES), "flags": [ANY_FLAG, *KNOWN_FLAGS]}
