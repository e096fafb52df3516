"""Leasing work: which image of a project an annotator gets next, and what happens to the lease.

Rules (DESIGN.md, issue 3): an annotator never gets an image they already did or skipped; an
image is never held by more than ``overlap`` annotators at once (a live lease or a submission
that was not rejected counts); leases expire, so abandoned work returns to the pool; gold items
are mixed in at the project's gold fraction, at positions the annotator cannot predict (they are
not bound by overlap: every annotator may do each once).

Concurrency: on PostgreSQL the candidate ``project_images`` row is locked with
``FOR NO KEY UPDATE SKIP LOCKED`` and the capacity is checked again after the lock (READ
COMMITTED gives the new statement a fresh snapshot); when every candidate is locked by
concurrent leasers the request waits on the first one instead of wrongly answering "no work".
On SQLite the whole section runs in a ``BEGIN IMMEDIATE`` transaction, which serialises writers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from pixmo.db.models import Assignment, Project, ProjectImage, QAPair, User, as_utc, utcnow
from pixmo.db.session import Database
from pixmo.errors import NotFoundError, PixmoError, ValidationError
from pixmo.projects import project_config

A = Assignment
PI = ProjectImage
MAX_LOCK_TRIES = 64


class LeaseError(PixmoError):
    """The assignment cannot take this action (already submitted, skipped, or lost to expiry)."""


@dataclass(frozen=True)
class Lease:
    """The outcome of asking for work: the assignment, and whether it was an existing lease."""

    assignment: Assignment
    resumed: bool


def holds_slot(now: dt.datetime):  # noqa: ANN201 - a SQL expression
    """Assignments that use one of an image's ``overlap`` slots: live leases and unrejected work."""
    return or_(
        and_(A.status == "leased", A.expires_at > now),
        and_(A.status == "submitted", or_(A.review_verdict.is_(None), A.review_verdict != "rejected")),
    )


def _done_by(user_id: int, now: dt.datetime):  # noqa: ANN202
    return and_(
        A.user_id == user_id,
        or_(A.status.in_(("submitted", "skipped")), and_(A.status == "leased", A.expires_at > now)),
    )


def _taken(now: dt.datetime):  # noqa: ANN202
    return (
        select(func.count())
        .select_from(A)
        .where(A.project_id == PI.project_id, A.image_id == PI.image_id, holds_slot(now))
        .scalar_subquery()
    )


def _candidates(project_id: int, user_id: int, overlap: int, gold: bool, now: dt.datetime, excluded: list[int]):  # noqa: ANN202
    mine = exists().where(A.project_id == project_id, A.image_id == PI.image_id, _done_by(user_id, now))
    stmt = select(PI.id, PI.image_id, PI.is_gold).where(PI.project_id == project_id, PI.is_gold.is_(gold), ~mine)
    if not gold:
        stmt = stmt.where(_taken(now) < overlap)
    if excluded:
        stmt = stmt.where(PI.id.not_in(excluded))
    return stmt.order_by(PI.id).limit(1)


GOLD_BLOCK = 20  # gold items are placed per block of this many tasks


def _due(fraction: float, tasks: int) -> int:
    # rounded first: 0.15 * 20 * 3 is 8.999999999999998 in floats
    return math.floor(round(fraction * tasks, 9))


def gold_due(fraction: float, tasks: int, key: bytes) -> int:
    """How many of a user's first ``tasks`` tasks should be gold items.

    Each block of `GOLD_BLOCK` tasks holds exactly its share (so the count never drifts from the
    fraction by more than a block's worth), at positions drawn from ``key`` (an HMAC of the server
    secret, the project and the user): an annotator cannot tell from the fraction and their own
    task count which tasks are the checks.
    """
    if fraction <= 0 or tasks <= 0:
        return 0
    block, pos = divmod(tasks - 1, GOLD_BLOCK)
    start = block * GOLD_BLOCK
    in_block = _due(fraction, start + GOLD_BLOCK) - _due(fraction, start)
    ranked = sorted(range(GOLD_BLOCK), key=lambda i: hmac.new(key, b"%d:%d" % (block, i), hashlib.sha256).digest())
    return _due(fraction, start) + sum(1 for i in ranked[:in_block] if i <= pos)


def _gold_key(secret: str, project_id: int, user_id: int) -> bytes:
    return hmac.new(secret.encode(), f"pixmo-gold:{project_id}:{user_id}".encode(), hashlib.sha256).digest()


def _want_gold(session: Session, project_id: int, user_id: int, fraction: float, now: dt.datetime, secret: str) -> bool:
    if fraction <= 0:
        return False
    done = _done_by(user_id, now)
    total = session.scalar(select(func.count()).where(A.project_id == project_id, done)) or 0
    start = total - total % GOLD_BLOCK  # the tasks done so far in the current block
    in_block = session.scalars(
        select(A.is_gold).where(A.project_id == project_id, done).order_by(A.id.desc()).limit(total - start)
    ).all() if total > start else []
    key = _gold_key(secret, project_id, user_id)
    # the next task is gold when this block has had fewer than are due by then: a gold item that
    # could not be served (every one done) is caught up within its block, never carried further,
    # so new gold items after a long dry spell do not come in a telltale run
    due = gold_due(fraction, total + 1, key) - _due(fraction, start)  # a whole block holds exactly its share
    return due > sum(1 for g in in_block if g)


def _lock_candidate(session: Session, stmt, is_pg: bool):  # noqa: ANN001, ANN202
    """A candidate row, locked on PostgreSQL (skipping rows other leasers hold, else waiting)."""
    if not is_pg:
        return session.execute(stmt).first()
    row = session.execute(stmt.with_for_update(of=PI, skip_locked=True, key_share=True)).first()
    if row is not None:
        return row
    row = session.execute(stmt).first()  # is there work that concurrent leasers hold right now?
    if row is not None:
        session.execute(select(PI.id).where(PI.id == row.id).with_for_update(key_share=True))
    return row


def _still_free(session: Session, pi_id: int, project_id: int, user_id: int, overlap: int, gold: bool, now: dt.datetime) -> bool:
    stmt = _candidates(project_id, user_id, overlap, gold, now, []).where(PI.id == pi_id)
    return session.execute(stmt).first() is not None


def next_assignment(
    db: Database, project_id: int, user_id: int, *, now: dt.datetime | None = None, secret: str = ""
) -> Lease | None:
    """Lease the next image of a project to a user, or return their live lease; None when no work is left.

    ``secret`` (the app's secret key) places the gold items where annotators cannot predict them.
    """
    now = now or utcnow()
    is_pg = not db.is_sqlite
    with db.session(write_lock=True) as session:
        project = session.get(Project, project_id)
        if project is None:
            raise NotFoundError(f"no project with id {project_id}")
        # one leasing transaction per user at a time (PostgreSQL: FOR NO KEY UPDATE of the user's
        # row), and none for a user deactivated since the request was let in (the lock also waits for
        # a deactivation in flight, which updates that row)
        user = session.execute(select(User.is_active).where(User.id == user_id).with_for_update(key_share=True)).first()
        if user is None or not user.is_active:
            raise LeaseError("this account is deactivated")
        live = session.scalars(
            select(A).where(A.project_id == project_id, A.user_id == user_id, A.status == "leased", A.expires_at > now)
            .order_by(A.id).limit(1)
        ).first()
        if live is not None:
            return Lease(live, resumed=True)
        _expire(session, project_id, now)
        cfg = project_config(project)
        order = [True, False] if _want_gold(session, project_id, user_id, cfg.gold_fraction, now, secret) else [False]
        for gold in order:
            excluded: list[int] = []
            for _ in range(MAX_LOCK_TRIES):
                # a savepoint per try: rolling it back releases the row lock of an image found full,
                # so this transaction never holds one image while waiting for another (no deadlock)
                savepoint = session.begin_nested() if is_pg else None
                row = _lock_candidate(session, _candidates(project_id, user_id, cfg.overlap, gold, now, excluded), is_pg)
                if row is None:
                    if savepoint is not None:
                        savepoint.rollback()
                    break
                if is_pg and not _still_free(session, row.id, project_id, user_id, cfg.overlap, gold, now):
                    savepoint.rollback()
                    excluded.append(row.id)
                    continue
                assignment = A(
                    project_id=project_id, image_id=row.image_id, user_id=user_id, status="leased",
                    is_gold=bool(row.is_gold), expires_at=now + dt.timedelta(minutes=cfg.lease_minutes),
                    created_at=now,
                )
                session.add(assignment)
                session.flush()
                if savepoint is not None:
                    savepoint.commit()
                return Lease(assignment, resumed=False)
        return None


def _expire(session: Session, project_id: int | None, now: dt.datetime) -> int:
    stmt = select(A.id).where(A.status == "leased", A.expires_at <= now)
    if project_id is not None:
        stmt = stmt.where(A.project_id == project_id)
    # SKIP LOCKED: a lease being submitted right now is left to its owner's transaction
    ids = list(session.scalars(stmt.with_for_update(skip_locked=True)))
    if ids:
        session.execute(update(A).where(A.id.in_(ids)).values(status="expired"))
    return len(ids)


def expire_leases(db: Database, project_id: int | None = None, *, now: dt.datetime | None = None) -> int:
    """Mark leases past their expiry as expired; returns how many."""
    with db.session(write_lock=True) as session:
        return _expire(session, project_id, now or utcnow())


def get_assignment(session: Session, assignment_id: int, user_id: int, *, lock: bool = False) -> Assignment:
    """The user's own assignment; NotFoundError for unknown ids and other users' work alike."""
    stmt = select(A).where(A.id == assignment_id, A.user_id == user_id)
    if lock:
        stmt = stmt.with_for_update()
    assignment = session.scalars(stmt).first()
    if assignment is None:
        raise NotFoundError(f"no assignment {assignment_id} of yours")
    return assignment


def _add_active(assignment: Assignment, active_seconds: float | None, now: dt.datetime) -> None:
    if active_seconds is None:
        return
    if not math.isfinite(active_seconds) or active_seconds < 0:
        raise ValidationError("active_seconds must be a non-negative number")
    # the client reports it; it cannot exceed the time since the lease began
    elapsed = (now - as_utc(assignment.created_at)).total_seconds()
    assignment.active_seconds = round(max(assignment.active_seconds or 0.0, min(active_seconds, max(elapsed, 0.0))), 1)


def claim_lease(session: Session, assignment: Assignment, now: dt.datetime | None = None) -> None:
    """Hold a (locked) assignment's lease now, to submit it or keep it alive; LeaseError otherwise.

    A lease that ran out is taken up again when its image has a free slot (nobody took it over).
    """
    now = now or utcnow()
    if assignment.status == "submitted":
        raise LeaseError("this task was submitted already")
    if assignment.status == "skipped":
        raise LeaseError("this task was skipped")
    if assignment.status == "leased" and as_utc(assignment.expires_at) > now:
        return
    project = session.get(Project, assignment.project_id)
    cfg = project_config(project)
    lock = select(PI.id).where(PI.project_id == assignment.project_id, PI.image_id == assignment.image_id)
    if not session.get_bind().dialect.name == "sqlite":
        lock = lock.with_for_update(key_share=True)
    session.execute(lock)
    holders = session.execute(
        select(A.user_id).where(
            A.project_id == assignment.project_id, A.image_id == assignment.image_id, A.id != assignment.id, holds_slot(now)
        )
    ).scalars().all()
    if assignment.user_id in holders:
        raise LeaseError("your lease on this task expired and you hold this image in a newer task; use that one")
    if not assignment.is_gold and len(holders) >= cfg.overlap:
        raise LeaseError("your lease on this task expired and the image went to someone else; take the next task")
    assignment.status = "leased"


def mark_submitted(assignment: Assignment, active_seconds: float | None, now: dt.datetime | None = None) -> None:
    """Record a submission on a claimed assignment."""
    now = now or utcnow()
    _add_active(assignment, active_seconds, now)
    assignment.status = "submitted"
    assignment.submitted_at = now
    assignment.review_verdict = None


def skip_assignment(db: Database, assignment_id: int, user_id: int, reason: str = "", *, active_seconds: float | None = None) -> Assignment:
    """Give a leased image back, recording why; the user will not be offered it again."""
    with db.session(write_lock=True) as session:
        assignment = get_assignment(session, assignment_id, user_id, lock=True)
        now = utcnow()  # after the lock: waiting for it may outlast the lease
        if assignment.status != "leased":
            raise LeaseError(f"only a leased task can be skipped (this one is {assignment.status})")
        _add_active(assignment, active_seconds, now)
        assignment.status = "skipped"
        assignment.skip_reason = (reason or "").replace("\0", "").strip()[:500] or None
        assignment.submitted_at = now
        # questions left unanswered in a skipped ask task are set aside, as a new question sets the
        # earlier ones aside: none stays pending for good
        session.execute(update(QAPair).where(QAPair.assignment_id == assignment.id, QAPair.status == "pending")
                        .values(status="rejected"))
        return assignment


def heartbeat(db: Database, assignment_id: int, user_id: int, active_seconds: float | None = None) -> Assignment:
    """Record active time and extend the lease by the project's lease length; a lease that ran out
    (a laptop asleep, a lost connection) is taken up again while nobody else holds the image, as a
    submission would be (a page whose lease lapsed once used to lose its work to the next annotator)."""
    with db.session(write_lock=True) as session:
        assignment = get_assignment(session, assignment_id, user_id, lock=True)
        now = utcnow()  # after the lock: waiting for it may outlast the lease
        lapsed = assignment.status != "leased" or as_utc(assignment.expires_at) <= now
        if lapsed and assignment.status in ("leased", "expired") and session.scalar(
            select(A.id).where(A.project_id == assignment.project_id, A.user_id == user_id, A.id != assignment.id,
                               A.status == "leased", A.expires_at > now).limit(1)
        ) is not None:
            # kept alive, the lapsed page and the newer one were two live leases of one annotator in
            # one project (asking for work returns one): its work can still be sent, as a submission
            raise LeaseError("this task's lease ran out and you have opened another task of this project since; "
                             "send this one's work or go on with the other")
        claim_lease(session, assignment, now)  # LeaseError when it was submitted, skipped or taken
        _add_active(assignment, active_seconds, now)
        cfg = project_config(session.get(Project, assignment.project_id))
        assignment.expires_at = now + dt.timedelta(minutes=cfg.lease_minutes)
        return assignment


# --------------------------------------------------------------------------- progress


def project_progress(session: Session, project: Project, now: dt.datetime | None = None) -> dict[str, Any]:
    """Counts for one project: images, completed images, assignments by state, reviews, active time."""
    now = now or utcnow()
    cfg = project_config(project)
    images = session.scalar(select(func.count()).select_from(PI).where(PI.project_id == project.id)) or 0
    gold = session.scalar(select(func.count()).select_from(PI).where(PI.project_id == project.id, PI.is_gold.is_(True))) or 0
    # regular images only, as the share is of them: an image made gold after it was done counts no more
    regular = select(PI.image_id).where(PI.project_id == project.id, PI.is_gold.is_(False))
    done_per_image = (
        select(A.image_id, func.count().label("n"))
        .where(A.project_id == project.id, A.status == "submitted", A.is_gold.is_(False),
               or_(A.review_verdict.is_(None), A.review_verdict != "rejected"), A.image_id.in_(regular))
        .group_by(A.image_id)
        .subquery()
    )
    complete = session.scalar(select(func.count()).select_from(done_per_image).where(done_per_image.c.n >= cfg.overlap)) or 0
    started = session.scalar(select(func.count()).select_from(done_per_image)) or 0
    states = dict(
        session.execute(
            select(A.status, func.count()).where(A.project_id == project.id).group_by(A.status)
        ).all()
    )
    live = session.scalar(
        select(func.count()).select_from(A).where(A.project_id == project.id, A.status == "leased", A.expires_at > now)
    ) or 0
    verdicts = dict(
        session.execute(
            select(A.review_verdict, func.count()).where(A.project_id == project.id, A.review_verdict.is_not(None))
            .group_by(A.review_verdict)
        ).all()
    )
    annotators = session.scalar(
        select(func.count(func.distinct(A.user_id))).where(A.project_id == project.id, A.status == "submitted")
    ) or 0
    active = session.scalar(select(func.sum(A.active_seconds)).where(A.project_id == project.id)) or 0.0
    submitted = states.get("submitted", 0)
    return {
        "project": project.name,
        "kind": project.kind,
        "overlap": cfg.overlap,
        "images": images,
        "gold_images": gold,
        "complete_images": complete,
        "started_images": started,
        "percent_complete": round(100.0 * complete / max(images - gold, 1), 1) if images - gold > 0 else 0.0,
        "submitted": submitted,
        "leased": live,
        "skipped": states.get("skipped", 0),
        "expired": states.get("expired", 0) + states.get("leased", 0) - live,
        "approved": verdicts.get("approved", 0),
        "rejected": verdicts.get("rejected", 0),
        "unreviewed": submitted - verdicts.get("approved", 0) - verdicts.get("rejected", 0) - verdicts.get("flagged", 0),
        "annotators": annotators,
        "active_hours": round(float(active) / 3600.0, 2),
    }


def user_stats(session: Session, user_id: int) -> dict[str, Any]:
    """An annotator's own numbers: submissions, skips, active time, reviews and rejection rate."""
    rows = session.execute(
        select(
            A.project_id,
            func.count().filter(A.status == "submitted"),
            func.count().filter(A.status == "skipped"),
            func.count().filter(A.review_verdict == "approved"),
            func.count().filter(A.review_verdict == "rejected"),
            func.coalesce(func.sum(A.active_seconds), 0.0),
        ).where(A.user_id == user_id).group_by(A.project_id)
    ).all()
    names = dict(session.execute(select(Project.id, Project.name)).all())
    projects = []
    for pid, submitted, skipped, approved, rejected, active in rows:
        reviewed = approved + rejected
        projects.append({
            "project": names.get(pid, str(pid)), "submitted": submitted, "skipped": skipped,
            "approved": approved, "rejected": rejected, "active_minutes": round(float(active) / 60.0, 1),
            "rejection_rate": round(rejected / reviewed, 3) if reviewed else None,
        })
    total = {k: sum(p[k] for p in projects) for k in ("submitted", "skipped", "approved", "rejected")}
    total["active_minutes"] = round(sum(p["active_minutes"] for p in projects), 1)
    reviewed = total["approved"] + total["rejected"]
    total["rejection_rate"] = round(total["rejected"] / reviewed, 3) if reviewed else None
    return {"total": total, "projects": projects}


def open_projects(session: Session) -> list[Project]:
    """Projects that have images, for the annotator's home page."""
    has_images = exists().where(PI.project_id == Project.id)
    return list(session.scalars(select(Project).where(has_images).order_by(Project.id)))
