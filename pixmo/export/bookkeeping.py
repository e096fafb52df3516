"""The ``exports`` snapshot row an export leaves in the database (its ``jobs`` row: `pixmo.jobs`)."""

from __future__ import annotations

from typing import Any

from pixmo.db.models import Export
from pixmo.db.queries import upsert
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
    newest location and job, since the snapshot id is unique, even when two such exports finish at once.
    """
    row = {
        "snapshot_id": snapshot_id, "format": fmt, "output_url": output_url, "filters": filters, "counts": counts,
        "versions": versions, "shards": shards, "manifest_sha256": manifest_sha256, "job_id": job_id,
    }
    with db.session() as session:
        return upsert(session, Export, row, ["snapshot_id"])
