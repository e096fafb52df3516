"""The rows an export leaves in the database: its ``jobs`` row and its ``exports`` snapshot row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from pixmo.db.models import Export, Job, utcnow
from pixmo.db.session import Database


def start_job(db: Database, kind: str, params: dict[str, Any]) -> int:
    """Insert a running ``jobs`` row; returns its id."""
    with db.session() as session:
        job = Job(kind=kind, params=params)
        session.add(job)
        session.flush()
        return job.id


def finish_job(db: Database, job_id: int, status: str, stats: dict[str, Any] | None = None, error: str | None = None) -> None:
    """Mark the job succeeded or failed, with its stats or error."""
    with db.session() as session:
        job = session.get(Job, job_id)
        job.status = status
        job.error = error
        job.stats = stats or {}
        job.finished_at = utcnow()


def record_export(
    db: Database,
    *,
    snapshot_id: str,
    fmt: str,
    output_url: str,
    filters: dict[str, Any],
    counts: dict[str, Any],
    versions: dict[str, Any],
    shards: list[dict[str, Any]],
    manifest_sha256: str | None,
    job_id: int,
) -> int:
    """Insert the ``exports`` row of a snapshot; returns its id.

    The same snapshot exported again (same content, filters and options) updates its row with the
    newest location and job, since the snapshot id is unique.
    """
    with db.session() as session:
        row = session.scalars(select(Export).where(Export.snapshot_id == snapshot_id)).first()
        if row is None:
            row = Export(snapshot_id=snapshot_id)
            session.add(row)
        row.format = fmt
        row.output_url = output_url
        row.filters = filters
        row.counts = counts
        row.versions = versions
        row.shards = shards
        row.manifest_sha256 = manifest_sha256
        row.job_id = job_id
        session.flush()
        return row.id
