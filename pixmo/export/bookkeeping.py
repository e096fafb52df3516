"""The ``exports`` snapshot row an export leaves in the database (its ``jobs`` row: `pixmo.jobs`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from pixmo.db.models import Export
from pixmo.db.session import Database


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
