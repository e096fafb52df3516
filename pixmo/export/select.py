"""Which images an export takes (`select_images`): filters applied with a few bulk queries."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import exists, func, or_, select
from sqlalchemy.orm import Session

from pixmo.db.models import (
    Caption,
    Image,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
    as_utc,
    utcnow,
)
from pixmo.db.session import Database
from pixmo.errors import ValidationError
from pixmo.export.options import ExportFilters
from pixmo.export.records import flag_names, latest_verdicts, member_ext, review_status
from pixmo.media import EXT_BY_MIME

TAR_BLOCK = 512
# Per-sample allowance for the JSON and text members when planning shard sizes.
TEXT_ALLOWANCE = 4096


@dataclass(frozen=True)
class Candidate:
    """An image that will become a sample, with the planning estimate of its size in the shard."""

    image_id: int
    key: str
    est_bytes: int


def _padded(n: int) -> int:
    return TAR_BLOCK + (n + TAR_BLOCK - 1) // TAR_BLOCK * TAR_BLOCK


def _annotated(as_of: dt.datetime):  # noqa: ANN202
    """A condition on `Image`: it has a caption, recording, point set or QA pair made before ``as_of``.

    EXISTS probes of each table's image_id index, rather than a DISTINCT scan of every table.
    """
    return or_(
        exists().where(Caption.image_id == Image.id, Caption.status == "ok", Caption.created_at < as_of),
        exists().where(Recording.image_id == Image.id, Recording.created_at < as_of),
        exists().where(PointSet.image_id == Image.id, PointSet.created_at < as_of),
        exists().where(QAPair.image_id == Image.id, QAPair.status != "failed", QAPair.created_at < as_of),
    )


def _statuses(session: Session, as_of: dt.datetime) -> dict[int, str]:
    stmt = select(Review.image_id, Review.target_type, Review.target_id, Review.verdict, Review.created_at, Review.id).where(
        Review.image_id.is_not(None), Review.created_at < as_of
    )
    per_image: dict[int, list[dict]] = defaultdict(list)
    for row in session.connection().execute(stmt).mappings():
        per_image[row["image_id"]].append(dict(row))
    return {image_id: review_status(latest_verdicts(rows)) for image_id, rows in per_image.items()}


def _flagged(session: Session, flags: Iterable[str], as_of: dt.datetime) -> set[int]:
    wanted = set(flags)
    out: set[int] = set()
    caption_flags = select(Caption.image_id, Caption.flags).where(Caption.status == "ok", Caption.created_at < as_of)
    transcript_flags = (
        select(Recording.image_id, Transcript.flags)
        .join(Recording, Recording.id == Transcript.recording_id)
        .where(Transcript.status == "ok", Transcript.created_at < as_of)
    )
    for stmt in (caption_flags, transcript_flags):
        for image_id, row_flags in session.connection().execute(stmt):
            if wanted.intersection(flag_names(row_flags)):
                out.add(image_id)
    return out


def _last_activity(session: Session, as_of: dt.datetime) -> dict[int, dt.datetime]:
    last: dict[int, dt.datetime] = {}
    tables = [
        select(Image.id, Image.created_at).where(Image.created_at < as_of),
        *(
            select(m.image_id, func.max(m.created_at)).where(m.created_at < as_of).group_by(m.image_id)
            for m in (Caption, Recording, PointSet, QAPair, Review)
        ),
        select(Recording.image_id, func.max(Transcript.created_at))
        .join(Recording, Recording.id == Transcript.recording_id)
        .where(Transcript.created_at < as_of)
        .group_by(Recording.image_id),
    ]
    for stmt in tables:
        for image_id, when in session.connection().execute(stmt):
            if image_id is None or when is None:
                continue
            when = as_utc(when)
            if image_id not in last or when > last[image_id]:
                last[image_id] = when
    return last


WRITERS_TIMEOUT_S = 60.0


def snapshot_time(db: Database, filters: ExportFilters) -> tuple[dt.datetime, list[str]]:
    """An export's snapshot time (``--until``, else now), once the writes in flight have ended, and
    a warning when some had not after `WRITERS_TIMEOUT_S` (rows they commit later are not exported)."""
    as_of = filters.until or utcnow()
    if db.wait_for_writers(WRITERS_TIMEOUT_S):
        return as_of, []
    return as_of, [f"database writes begun before the export were still open after {WRITERS_TIMEOUT_S:.0f} s: "
                   "rows they commit later are not in this export"]


def _member_bytes(nbytes: int, mime: str, width: int, height: int) -> int:
    """The size to plan a shard with: the stored size, or for an image converted to PNG (GIF, BMP,
    TIFF) its size as uncompressed RGBA, which a PNG does not exceed by much (a compressed TIFF
    can grow several times as PNG; planning by its stored size overfilled shards)."""
    if member_ext(mime) == EXT_BY_MIME.get(mime):
        return nbytes
    return max(nbytes, 4 * max(width, 0) * max(height, 0))


def select_images(
    session: Session, filters: ExportFilters, *, as_of: dt.datetime, with_audio: bool = False
) -> list[Candidate]:
    """The images that pass ``filters`` as of ``as_of``, sorted by key (their sha256)."""
    stmt = select(Image.id, Image.sha256, Image.bytes, Image.mime, Image.width, Image.height).where(Image.created_at < as_of)
    if filters.projects:
        known = set(session.scalars(select(Project.name).where(Project.name.in_(filters.projects))))
        missing = [p for p in filters.projects if p not in known]
        if missing:
            raise ValidationError(f"no project named {missing[0]!r}")
        members = (
            select(ProjectImage.image_id)
            .join(Project, Project.id == ProjectImage.project_id)
            .where(Project.name.in_(filters.projects), ProjectImage.created_at < as_of)
        )
        stmt = stmt.where(Image.id.in_(members))
    if filters.annotated_only:
        stmt = stmt.where(_annotated(as_of))
    # .all() fetches at once; iterating a result fetches row by row, several times slower on SQLite
    images = {image_id: (sha, _member_bytes(nbytes, mime, width, height))
              for image_id, sha, nbytes, mime, width, height in session.connection().execute(stmt).all()}
    keep = set(images)
    if filters.review_status:
        statuses = _statuses(session, as_of)
        keep = {i for i in keep if statuses.get(i, "pending") in filters.review_status}
    if filters.exclude_flags:
        keep -= _flagged(session, filters.exclude_flags, as_of)
    if filters.since is not None:
        last = _last_activity(session, as_of)
        keep = {i for i in keep if i in last and last[i] >= filters.since}
    audio: dict[int, list[int]] = defaultdict(list)
    if with_audio and keep:
        for image_id, nbytes in session.connection().execute(
            select(Recording.image_id, Recording.bytes).where(Recording.created_at < as_of)
        ):
            audio[image_id].append(nbytes)
    out = []
    fixed = 2 * _padded(0) + TEXT_ALLOWANCE
    for image_id in keep:
        sha, nbytes = images[image_id]
        est = _padded(nbytes) + fixed
        if image_id in audio:
            est += sum(_padded(n) for n in audio[image_id])
        out.append(Candidate(image_id, sha, est))
    return sorted(out, key=lambda c: c.key)
