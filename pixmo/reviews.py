"""Review of submitted work: the queue of unreviewed submissions and verdicts on them.

A verdict is a ``reviews`` row; it is also copied onto the submission's assignment, and a
rejected assignment no longer holds one of its image's overlap slots, so the image returns to
the queue for another annotator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import exists, null, select, update
from sqlalchemy.orm import Session

from pixmo.db.models import (
    EXCHANGE_SOURCES, REVIEW_TARGET_MODELS, REVIEW_TARGETS, VERDICTS, Assignment, Caption, Image, PointSet, Project, QAPair, Recording, Review, Transcript, User,
)
from pixmo.db.queries import newest_verdicts, review_target
from pixmo.db.session import Database
from pixmo.errors import NotFoundError, ValidationError

# what the app's review queue offers: the annotators' own items
TARGETS = {t: REVIEW_TARGET_MODELS[t] for t in ("recording", "point_set", "qa_pair")}
MAX_REASON_CHARS = 1000


@dataclass
class ReviewItem:
    """One submission awaiting review, with what a reviewer needs to judge it."""

    target_type: str
    target_id: int
    project: str
    project_kind: str
    annotator: str | None
    image_id: int
    image_key: str
    image_width: int
    image_height: int
    created_at: Any
    is_gold: bool = False
    details: dict[str, Any] = field(default_factory=dict)


def _unreviewed(model, target_type: str):  # noqa: ANN001, ANN202
    return ~exists().where(Review.target_type == target_type, Review.target_id == model.id)


def review_queue(session: Session, reviewer_id: int, project_id: int | None = None, limit: int = 20) -> list[ReviewItem]:
    """Unreviewed submissions (oldest first), never the reviewer's own work."""
    items: list[ReviewItem] = []
    for target_type, model in TARGETS.items():
        stmt = (
            select(model, Image, Project, User.username, Assignment.is_gold)
            .join(Image, Image.id == model.image_id)
            .join(Project, Project.id == model.project_id)
            .outerjoin(User, User.id == model.user_id)
            .outerjoin(Assignment, Assignment.id == model.assignment_id)
            .where(_unreviewed(model, target_type), (model.user_id.is_(None)) | (model.user_id != reviewer_id))
        )
        if model is QAPair:
            stmt = stmt.where(QAPair.source.in_(EXCHANGE_SOURCES), QAPair.status == "accepted")
        if project_id is not None:
            stmt = stmt.where(model.project_id == project_id)
        rows = session.execute(stmt.order_by(model.id).limit(limit)).all()
        transcripts = _latest_transcripts(session, [r[0].id for r in rows]) if model is Recording else {}
        for row, image, project, username, is_gold in rows:
            items.append(ReviewItem(
                target_type, row.id, project.name, project.kind, username, image.id, image.storage_key,
                image.width, image.height, row.created_at, bool(is_gold), _details(row, transcripts.get(row.id)),
            ))
    items.sort(key=lambda it: (str(it.created_at), it.target_type, it.target_id))
    return items[:limit]


def _latest_transcripts(session: Session, recording_ids: list[int]) -> dict[int, Transcript]:
    """The newest ok transcript of each recording, in one query."""
    latest: dict[int, Transcript] = {}
    if recording_ids:
        stmt = (select(Transcript).where(Transcript.recording_id.in_(recording_ids), Transcript.status == "ok")
                .order_by(Transcript.id))
        for t in session.scalars(stmt):
            latest[t.recording_id] = t
    return latest


def _details(row: Any, transcript: Transcript | None = None) -> dict[str, Any]:
    if isinstance(row, Recording):
        return {"storage_key": row.storage_key, "mime": row.mime, "duration_s": row.duration_s,
                "transcript": transcript.text if transcript else None,
                "asr_model": transcript.asr_model if transcript else None}
    if isinstance(row, PointSet):
        return {"label": row.label, "points": row.points, "not_present": row.not_present, "method": row.method}
    details = {"question": row.question, "answer": row.answer, "revisions": row.revisions}
    if row.source == "point_explain":  # what the annotator saw: the text citing [n], and the marks to draw
        from pixmo.ask import explanation_view

        details["text"], details["marks"] = explanation_view(row)
    return details


def target_owner(session: Session, target_type: str, target_id: int) -> tuple[int, int | None]:
    """(image id, annotator id) of a reviewable item; NotFoundError when it does not exist."""
    if target_type not in REVIEW_TARGETS:
        raise ValidationError(f"target_type must be one of {', '.join(REVIEW_TARGETS)}, not {target_type!r}")
    source, item, owner = review_target(target_type)
    annotator = null() if owner is Caption else owner.user_id  # captions are machine-made
    row = session.execute(select(owner.image_id, annotator).select_from(source).where(item.id == target_id)).first()
    if row is None:
        raise NotFoundError(f"no {target_type} {target_id}")
    return row[0], row[1]


def speakers_behind(session: Session, target_type: str, target_id: int) -> set[int]:
    """The annotators whose recordings a machine-made item was written from: a caption's (through
    its source transcripts), or a CapQA pair's caption's. Judging one is judging their own words."""
    if target_type == "qa_pair":
        caption_id = session.scalar(select(QAPair.caption_id).where(QAPair.id == target_id, QAPair.user_id.is_(None)))
        if caption_id is None:
            return set()
        target_type, target_id = "caption", caption_id
    if target_type != "caption":
        return set()
    transcript_ids = session.scalar(select(Caption.source_transcript_ids).where(Caption.id == target_id)) or []
    if not transcript_ids:
        return set()
    return set(session.scalars(
        select(Recording.user_id).join(Transcript, Transcript.recording_id == Recording.id)
        .where(Transcript.id.in_([int(t) for t in transcript_ids]), Recording.user_id.is_not(None))
    ))


def add_review(
    session: Session, reviewer_id: int, target_type: str, target_id: int, verdict: str, reason: str = "",
    *, targets: tuple[str, ...] = REVIEW_TARGETS,
) -> Review:
    """Write a verdict on one item in ``session``: the one place every caller (app, dashboard) goes.

    A rejection needs a reason; nobody reviews their own work; the verdict is copied onto the
    submission's assignment. Earlier verdicts stay as history.
    """
    if target_type not in targets:
        raise ValidationError(f"target_type must be one of {', '.join(targets)}, not {target_type!r}")
    if verdict not in VERDICTS:
        raise ValidationError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    reason = (reason or "").strip()
    if verdict == "rejected" and not reason:
        raise ValidationError("a rejection needs a reason: say why the submission is rejected")
    if len(reason) > MAX_REASON_CHARS:
        raise ValidationError(f"the reason is longer than {MAX_REASON_CHARS} characters")
    image_id, annotator_id = target_owner(session, target_type, int(target_id))
    if reviewer_id == annotator_id or reviewer_id in speakers_behind(session, target_type, int(target_id)):
        raise ValidationError("nobody reviews their own work")
    if target_type == "qa_pair":
        source, status = session.execute(select(QAPair.source, QAPair.status).where(QAPair.id == int(target_id))).one()
        if source in EXCHANGE_SOURCES and status != "accepted":  # its verdict would land on the whole task
            raise ValidationError(f"only the accepted answer of an exchange with the model is reviewed; this one is {status}")
    assignment_id = _assignment_of(session, target_type, int(target_id))
    if assignment_id is not None:
        # the submission's row first (PostgreSQL): two reviewers judging items of one submission at
        # once must not each write a combined verdict that misses the other's
        session.execute(select(Assignment.id).where(Assignment.id == assignment_id).with_for_update())
    review = Review(target_type=target_type, target_id=int(target_id), image_id=image_id, reviewer_id=reviewer_id,
                    verdict=verdict, reason=reason)
    session.add(review)
    if target_type == "assignment":
        # a verdict on a whole task is a verdict on each of its items: the export, the HF subsets,
        # the loader and the annotator's rejections page judge work item by item
        for item_type, item_id in _items_of(session, int(target_id)):
            session.add(Review(target_type=item_type, target_id=item_id, image_id=image_id, reviewer_id=reviewer_id,
                               verdict=verdict, reason=reason))
    sync_assignment_verdict(session, target_type, int(target_id), verdict)
    session.flush()
    return review


def _assignment_of(session: Session, target_type: str, target_id: int) -> int | None:
    if target_type == "assignment":
        return target_id
    model = TARGETS.get(target_type)
    return None if model is None else session.scalar(select(model.assignment_id).where(model.id == target_id))


def _items_of(session: Session, assignment_id: int) -> list[tuple[str, int]]:
    """(target type, id) of the reviewable items of a submission (an exchange with the model: its accepted answer)."""
    items = []
    for name, model in TARGETS.items():
        stmt = select(model.id).where(model.assignment_id == assignment_id)
        if model is QAPair:
            stmt = stmt.where(QAPair.source.not_in(EXCHANGE_SOURCES) | (QAPair.status == "accepted"))
        items += [(name, i) for i in session.scalars(stmt.order_by(model.id))]
    return items


def record_review(
    db: Database, reviewer_id: int, target_type: str, target_id: int, verdict: str, reason: str = ""
) -> Review:
    """Approve, reject (a reason is required) or flag one submission of the annotation app."""
    with db.session(write_lock=True) as session:
        return add_review(session, reviewer_id, target_type, target_id, verdict, reason, targets=tuple(TARGETS))


# what a submission's verdict is when its items were judged differently: one rejected item sends the
# whole task back (its slot is freed for another annotator), a flagged one holds it for a look
_ASSIGNMENT_VERDICT_ORDER = ("rejected", "flagged", "approved")


def sync_assignment_verdict(session: Session, target_type: str, target_id: int, verdict: str) -> None:
    """Keep the submission's assignment verdict in step with a new verdict, so a rejection frees the image's slot.

    The assignment's verdict is that of its worst current verdict: over the task itself and every item
    of the submission (recordings, point sets, QA pairs), each judged by its newest review, so approving
    one item does not undo the rejection of another (a verdict on the task itself is written on each
    item too, so approving the whole task approves them all). Whoever writes a ``reviews`` row (the
    app, the dashboard) calls this in the same transaction, after adding the row.
    """
    assignment_id = _assignment_of(session, target_type, target_id)
    if assignment_id is None:
        return
    session.flush()  # the new review counts
    items: dict[str, list[int]] = {"assignment": [assignment_id]}
    for item_type, item_id in _items_of(session, assignment_id):
        items.setdefault(item_type, []).append(item_id)
    current = set(newest_verdicts(session, items).values()) or {verdict}
    combined = next((v for v in _ASSIGNMENT_VERDICT_ORDER if v in current), verdict)
    session.execute(update(Assignment).where(Assignment.id == assignment_id).values(review_verdict=combined))


def recent_rejections(session: Session, user_id: int, limit: int = 5) -> list[dict[str, Any]]:
    """The latest rejections of a user's work that still stand (not since approved or flagged),
    with the reviewers' reasons."""
    from pixmo.curation.sql import is_current_review  # the curation package imports this module

    out = []
    for target_type, model in TARGETS.items():
        stmt = (
            select(Review.reason, Review.created_at, Project.name)
            .join(model, (Review.target_type == target_type) & (Review.target_id == model.id))
            .outerjoin(Project, Project.id == model.project_id)
            .where(model.user_id == user_id, Review.verdict == "rejected", is_current_review(Review))
            .order_by(Review.id.desc()).limit(limit)
        )
        out += [{"reason": r, "at": at, "project": p, "kind": target_type} for r, at, p in session.execute(stmt)]
    out.sort(key=lambda d: str(d["at"]), reverse=True)
    return out[:limit]
