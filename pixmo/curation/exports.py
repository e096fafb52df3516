"""Export snapshots: what was written, where, with which filters, counts and shards."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import select
from sqlalchemy.orm import Session

from pixmo.curation.sql import keyset_page
from pixmo.db.models import Export
from pixmo.errors import PixmoError


def _shard_bytes(shard: Any) -> int:
    if isinstance(shard, dict):
        for key in ("bytes", "size", "nbytes"):
            if isinstance(shard.get(key), (int, float)):
                return int(shard[key])
    return 0


def list_exports(session: Session, before_id: int | None = None, limit: int = 50) -> tuple[list[dict[str, Any]], int | None]:
    """Snapshots newest first (keyset on id); returns (rows, next ``before_id`` or None)."""
    exports, more = keyset_page(session, select(Export), Export.id, before_id, limit, descending=True, scalars=True)
    rows = []
    for e in exports:
        shards = list(e.shards or [])
        rows.append({
            "id": e.id, "snapshot_id": e.snapshot_id, "format": e.format, "output_url": e.output_url,
            "created_at": e.created_at, "filters": dict(e.filters or {}), "counts": dict(e.counts or {}),
            "versions": dict(e.versions or {}), "shards": shards, "n_shards": len(shards),
            "total_bytes": sum(_shard_bytes(s) for s in shards), "manifest_sha256": e.manifest_sha256, "job_id": e.job_id,
        })
    return rows, (rows[-1]["id"] if more else None)


def is_remote(output_url: str) -> bool:
    """Whether a snapshot's location is reached over the network (``s3://``): not a folder or ``file://``."""
    return urlparse(output_url).scheme not in ("", "file")


def read_manifest(output_url: str) -> dict[str, Any] | None:
    """The manifest file of a snapshot at ``output_url`` (a folder, ``file://``, a ``.json`` path or
    ``s3://bucket/prefix``); None when there is none or it cannot be read (the database keeps its
    fields anyway). S3 is asked over the network, so callers fetch remote manifests on request."""
    from pixmo.export.manifest import MANIFEST_NAME
    from pixmo.export.target import open_target

    parsed = urlparse(output_url)
    try:
        if not is_remote(output_url):
            local = Path(parsed.path if parsed.scheme == "file" else output_url)
            if local.suffix == ".json":
                return json.loads(local.read_text())
        return json.loads(open_target(output_url).get_bytes(MANIFEST_NAME))
    except (PixmoError, OSError, ValueError):
        return None
