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

MANIFEST_NAMES = ("manifest.json",)


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


def read_manifest(output_url: str) -> dict[str, Any] | None:
    """The manifest file of a snapshot at ``output_url`` (a folder, ``file://``, a ``.json`` path or
    ``s3://bucket/prefix``); None when there is none or it cannot be read (the database keeps its
    fields anyway). S3 is asked over the network, so callers fetch remote manifests on request."""
    from pixmo.errors import PixmoError
    from pixmo.export.target import open_target

    parsed = urlparse(output_url)
    local = Path(parsed.path if parsed.scheme == "file" else output_url) if parsed.scheme in ("", "file") else None
    try:
        if local is not None and local.suffix == ".json":
            return json.loads(local.read_text())
        target = open_target(output_url)
        for name in MANIFEST_NAMES:
            if target.exists(name):
                return json.loads(target.get_bytes(name))
    except (PixmoError, OSError, ValueError):
        return None
    return None
