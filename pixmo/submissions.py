"""Submissions of leased work: spoken captions (audio uploads) and point sets.

Audio is decoded once with PyAV and rejected, with a reason and a message for the annotator,
when it is not audio, too short, too long (beyond a small tolerance), silent, or too big. The
blob is stored first (content-addressed, so a retry rewrites nothing) and the recording row is
written in one transaction with the assignment's status; the client's idempotency key is unique,
so a replayed upload returns the first recording instead of making a second one.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from pixmo.assignments import LeaseError, claim_lease, get_assignment, mark_submitted
from pixmo.audio import EXT_BY_MIME, MIME_BY_CONTAINER, SAMPLE_RATE, AudioError, DecodedAudio, decode_audio
from pixmo.db.models import POINT_METHODS, Assignment, PointSet, Project, Recording, utcnow
from pixmo.db.session import Database
from pixmo.errors import ValidationError
from pixmo.formats.points import validate_points
from pixmo.projects import ProjectConfig, clean_label, project_config
from pixmo.storage import BlobStore

# MediaRecorder's first and last chunks and container overhead blur the length a little
DURATION_TOLERANCE_S = 1.0
# a recording is silent when even its loud parts (95th percentile of 50 ms frames) stay below this
SILENCE_DBFS = -45.0
_KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")


class UploadRejected(ValidationError):
    """An upload was refused; ``reason`` is a short code, the message is for the annotator."""

    def __init__(self, reason: str, message: str, status: int = 422):
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class RecordingResult:
    recording: Recording
    replayed: bool  # True when the idempotency key had been used: this is the first upload's result


def loudness_dbfs(samples: np.ndarray, frame_s: float = 0.05, quantile: float = 0.95) -> float:
    """Loudness of the loud parts: the ``quantile`` of per-frame RMS, in dB full scale."""
    n = max(1, int(SAMPLE_RATE * frame_s))
    usable = len(samples) // n * n
    if usable == 0:
        return -math.inf
    frames = samples[:usable].reshape(-1, n).astype(np.float64)
    rms = float(np.quantile(np.sqrt(np.mean(frames * frames, axis=1)), quantile))
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def check_audio(data: bytes, cfg: ProjectConfig, max_bytes: int) -> DecodedAudio:
    """Decode and validate one recording for a project; UploadRejected says what is wrong."""
    if len(data) > max_bytes:
        raise UploadRejected("too_big", f"The recording is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.1f} MB.", 413)
    limit = cfg.max_seconds + DURATION_TOLERANCE_S
    try:
        audio = decode_audio(data, max_seconds=limit)
    except AudioError as exc:
        if exc.reason == "too_long":
            raise UploadRejected("too_long", f"The recording is longer than {limit:g} s; the limit is {cfg.max_seconds:g} s.") from exc
        what = "empty" if exc.reason == "empty" else "not_audio"
        raise UploadRejected(what, "The upload is not audio that can be decoded." if what == "not_audio"
                             else "The upload is empty.") from exc
    seconds = audio.duration_s
    if seconds < cfg.min_seconds - DURATION_TOLERANCE_S:
        raise UploadRejected("too_short", f"The recording is {seconds:.1f} s long; please speak for at least {cfg.min_seconds:g} s.")
    if seconds > cfg.max_seconds + DURATION_TOLERANCE_S:
        raise UploadRejected("too_long", f"The recording is {seconds:.1f} s long; the limit is {cfg.max_seconds:g} s.")
    level = loudness_dbfs(audio.samples)
    if level < SILENCE_DBFS:
        raise UploadRejected("silent", "The recording is silent; check that the right microphone is on and not muted.")
    return audio


def check_idempotency_key(key: str | None) -> str:
    if not key or not _KEY_RE.match(key):
        raise UploadRejected("bad_key", "An idempotency key of 8-128 letters, digits or ._:- is required.", 400)
    return key


def _replay(session, key: str, user_id: int, assignment_id: int) -> Recording | None:  # noqa: ANN001
    """The recording an earlier upload with this key stored, if any; a key of another user or
    another task is refused (its upload is not this one)."""
    rec = session.scalars(select(Recording).where(Recording.idempotency_key == key)).first()
    if rec is not None and (rec.user_id != user_id or rec.assignment_id != assignment_id):
        raise UploadRejected("key_in_use", "This idempotency key belongs to another upload.", 409)
    return rec


def _claimed(session, assignment_id: int, user_id: int, kind: str) -> tuple[Assignment, Project, dt.datetime]:  # noqa: ANN001
    """The locked assignment, claimed for a submission, its project, and the time of the claim."""
    assignment = get_assignment(session, assignment_id, user_id, lock=True)
    # the time is read once the row is locked: waiting for the lock may outlast the lease, which
    # another annotator may then have taken over
    now = utcnow()
    project = session.get(Project, assignment.project_id)
    if project.kind != kind:
        raise ValidationError(f"this is a {project.kind} task, not a {kind} task")
    claim_lease(session, assignment, now)
    return assignment, project, now


def submit_recording(
    db: Database,
    store: BlobStore,
    *,
    assignment_id: int,
    user_id: int,
    data: bytes,
    idempotency_key: str | None,
    max_bytes: int,
    active_seconds: float | None = None,
) -> RecordingResult:
    """Validate and store a spoken caption for a leased caption task."""
    key = check_idempotency_key(idempotency_key)
    with db.session() as session:
        first = _replay(session, key, user_id, assignment_id)
        if first is not None:
            return RecordingResult(first, replayed=True)
        assignment = get_assignment(session, assignment_id, user_id)
        project = session.get(Project, assignment.project_id)
        if project.kind != "caption":
            raise ValidationError(f"this is a {project.kind} task; it takes no recording")
        if assignment.status in ("submitted", "skipped"):
            # a retry with this key may have submitted it since the first look (PostgreSQL's reads
            # each see what is committed when they start)
            first = _replay(session, key, user_id, assignment_id)
            if first is not None:
                return RecordingResult(first, replayed=True)
            raise LeaseError(f"this task was {assignment.status} already")
        cfg = project_config(project)
    audio = check_audio(data, cfg, max_bytes)  # outside any transaction: decoding takes a while
    mime = MIME_BY_CONTAINER.get(audio.container, "application/octet-stream")
    put = store.put_bytes(data, content_type=mime, ext=EXT_BY_MIME.get(mime, "bin"))
    try:
        with db.session(write_lock=True) as session:
            # a concurrent upload with this key may have submitted the task while this one decoded
            first = _replay(session, key, user_id, assignment_id)
            if first is not None:
                return RecordingResult(first, replayed=True)
            try:
                assignment, _, now = _claimed(session, assignment_id, user_id, "caption")
            except LeaseError:
                first = _replay(session, key, user_id, assignment_id)  # it committed while we waited for the lock
                if first is not None:
                    return RecordingResult(first, replayed=True)
                raise
            rec = Recording(
                project_id=assignment.project_id, image_id=assignment.image_id, user_id=user_id,
                assignment_id=assignment.id, storage_key=put.key, sha256=put.sha256, mime=mime,
                duration_s=round(audio.duration_s, 3), bytes=put.size, idempotency_key=key,
            )
            session.add(rec)
            mark_submitted(assignment, active_seconds, now)
            session.flush()
            return RecordingResult(rec, replayed=False)
    except IntegrityError:
        with db.session() as session:
            first = _replay(session, key, user_id, assignment_id)
        if first is None:
            raise
        return RecordingResult(first, replayed=True)


def check_points(
    cfg: ProjectConfig, label: str, points: list[Any], not_present: bool, method: str
) -> tuple[str, list[list[float]]]:
    """The cleaned label and points (normalised, rounded); ValidationError says what is wrong."""
    try:
        label = clean_label(label)
    except ValueError as exc:  # control characters, or longer than MAX_LABEL_CHARS
        raise ValidationError(f"The label is refused: {exc}.") from None
    if not label:
        raise ValidationError("Say what you pointed at: the label is empty.")
    if cfg.labels and label not in cfg.labels:
        raise ValidationError("The label is not one of this project's labels.")
    if method not in POINT_METHODS:
        raise ValidationError(f"The collection method must be {' or '.join(POINT_METHODS)}.")
    if not isinstance(points, list):
        raise ValidationError("Points must be a list of [x, y] pairs.")
    if not_present and points:
        raise ValidationError("A 'not present' answer cannot have points.")
    if not not_present and not points:
        raise ValidationError("Click at least one point, or answer 'not present'.")
    if len(points) > cfg.max_points:
        raise ValidationError(f"{len(points)} points is more than this project's limit of {cfg.max_points}.")
    for p in points:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise ValidationError("Each point must be an [x, y] pair.")
    try:
        checked = validate_points(points)
    except ValidationError as exc:
        raise ValidationError(f"A point lies outside the image ({exc}).") from exc
    return label, [[round(p.x, 5), round(p.y, 5)] for p in checked]


def submit_points(
    db: Database,
    *,
    assignment_id: int,
    user_id: int,
    label: str,
    points: list[Any],
    not_present: bool = False,
    method: str = "pointing",
    active_seconds: float | None = None,
) -> PointSet:
    """Validate and store the points of one referring expression for a leased pointing task."""
    with db.session() as session:
        assignment = get_assignment(session, assignment_id, user_id)
        project = session.get(Project, assignment.project_id)
        cfg = project_config(project)
    label, clean = check_points(cfg, label, points, not_present, method)
    with db.session(write_lock=True) as session:
        assignment, _, now = _claimed(session, assignment_id, user_id, "points")
        ps = PointSet(
            image_id=assignment.image_id, project_id=assignment.project_id, user_id=user_id,
            assignment_id=assignment.id, label=label, points=clean, not_present=bool(not_present), method=method,
        )
        session.add(ps)
        mark_submitted(assignment, active_seconds, now)
        session.flush()
        return ps


def task_label(session, assignment: Assignment) -> str | None:  # noqa: ANN001
    """The referring expression a pointing task asks for: the project label with the fewest point
    sets on this image so far, not counting rejected work (None when the project has no labels: the
    annotator writes one)."""
    from sqlalchemy import func, or_

    cfg = project_config(session.get(Project, assignment.project_id))
    if not cfg.labels:
        return None
    done = Assignment.__table__.alias("done")
    counts = dict(session.execute(
        select(PointSet.label, func.count())
        .outerjoin(done, done.c.id == PointSet.assignment_id)
        .where(PointSet.project_id == assignment.project_id, PointSet.image_id == assignment.image_id,
               # a rejection freed the slot to have the label answered again: it is not an answer
               or_(done.c.review_verdict.is_(None), done.c.review_verdict != "rejected"))
        .group_by(PointSet.label)
    ).all())
    # rotate the start by assignment id so concurrent annotators of one image get different labels
    n = len(cfg.labels)
    order = [cfg.labels[(assignment.id + i) % n] for i in range(n)]
    return min(order, key=lambda label: counts.get(label, 0))
