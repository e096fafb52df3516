"""``manifest.json``: written last, it is what makes a webdataset export complete.

It records the snapshot id (a hash of everything else in the manifest: filters, options, counts,
versions and every shard's sha256), so two exports with the same id hold the same bytes. The
manifest has no wall-clock time in it: the same database gives a byte-identical export.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from typing import Any

import pixmo
from pixmo.export.errors import ManifestError
from pixmo.export.options import ExportFilters, WebDatasetOptions
from pixmo.export.records import ROW_KINDS
from pixmo.export.shards import MEMBER_MODE, MEMBER_MTIME, MEMBER_OWNER, SPLITS, ShardResult
from pixmo.export.target import ExportTarget
from schemas.export import EXPORT_SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "pixmo-webdataset"
MANIFEST_VERSION = 1
SHARD_NAME_RE = re.compile(r"^(train|validation)-[0-9]{6,}\.tar$")  # more digits past a million shards


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def snapshot_id(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its ``snapshot_id``."""
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "snapshot_id"})).hexdigest()


def brace_pattern(names: Sequence[str]) -> str | None:
    """``train-{000000..000003}.tar`` for consecutive shard names (webdataset's URL syntax)."""
    if not names:
        return None
    if len(names) == 1:
        return names[0]
    split = names[0].split("-")[0]
    first, last = names[0][len(split) + 1 : -4], names[-1][len(split) + 1 : -4]
    return f"{split}-{{{first}..{last}}}.tar"


def build_manifest(filters: ExportFilters, options: WebDatasetOptions, results: Sequence[ShardResult]) -> dict[str, Any]:
    """The manifest of an export made of ``results`` (ordered by split, then index)."""
    results = sorted(results, key=lambda r: (SPLITS.index(r.split), r.index))
    rows = dict.fromkeys(ROW_KINDS, 0)
    statuses: dict[str, int] = {}
    projects: dict[str, int] = {}
    for r in results:
        for k, v in r.rows.items():
            rows[k] = rows.get(k, 0) + v
        for k, v in r.review_status.items():
            statuses[k] = statuses.get(k, 0) + v
        for k, v in r.projects.items():
            projects[k] = projects.get(k, 0) + v
    splits = {}
    for split in SPLITS:
        names = [r.name for r in results if r.split == split]
        splits[split] = {
            "samples": sum(r.samples for r in results if r.split == split),
            "shards": names,
            "urls": brace_pattern(names),
        }
    counts = {
        "samples": sum(r.samples for r in results),
        "shards": len(results),
        "bytes": sum(r.bytes for r in results),
        "image_bytes": sum(r.image_bytes for r in results),
        "audio_bytes": sum(r.audio_bytes for r in results),
        "audio_files": sum(r.audio_files for r in results),
        "reencoded_images": sum(r.reencoded for r in results),
        "review_status": dict(sorted(statuses.items())),
        "projects": dict(sorted(projects.items())),  # samples per project (a sample may be in several)
        **{split: splits[split]["samples"] for split in SPLITS},
        **rows,
    }
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "manifest_version": MANIFEST_VERSION,
        "schema_version": EXPORT_SCHEMA_VERSION,
        "code_version": pixmo.__version__,
        "snapshot_id": "",
        "filters": filters.as_dict(),
        "options": options.content_dict(),
        "tar": {"mtime": MEMBER_MTIME, "owner": MEMBER_OWNER, "mode": oct(MEMBER_MODE)},
        "counts": counts,
        "versions": {
            "asr_models": sorted({m for r in results for m in r.asr_models}),
            "llm_models": sorted({m for r in results for m in r.llm_models}),
            "prompt_versions": sorted({m for r in results for m in r.prompt_versions}),
        },
        "splits": splits,
        "shards": [r.manifest_entry() for r in results],
    }
    manifest["snapshot_id"] = snapshot_id(manifest)
    return manifest


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    """The manifest file's bytes: pretty, sorted keys, trailing newline."""
    return (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def read_manifest(target: ExportTarget) -> dict[str, Any]:
    """The manifest of the export at ``target``; ManifestError when there is none or it is unreadable."""
    if not target.exists(MANIFEST_NAME):
        why = target.absent_because() or "not a webdataset export, or one that did not finish (run it again)"
        raise ManifestError(f"{target.url} has no {MANIFEST_NAME}: {why}")
    try:
        manifest = json.loads(target.get_bytes(MANIFEST_NAME))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{target.url}/{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ManifestError(f"{target.url}/{MANIFEST_NAME} is not a {MANIFEST_FORMAT} manifest")
    damage = _manifest_damage(manifest)
    if damage:
        raise ManifestError(f"{target.url}/{MANIFEST_NAME} is damaged: {damage}")
    return manifest


def is_count(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 0 (not a bool, not a float)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _manifest_damage(manifest: dict[str, Any]) -> str | None:
    """What is wrong with the shape of a manifest that readers rely on (shards, splits, counts), or None."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        return "'shards' is not a list"
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict):
            return f"shards[{i}] is not an object"
        if not isinstance(entry.get("name"), str) or not SHARD_NAME_RE.match(entry["name"]):
            return f"shards[{i}] has no shard name (split-NNNNNN.tar)"
        for key, ok in (("split", lambda v: isinstance(v, str)), ("sha256", lambda v: isinstance(v, str)),
                        ("bytes", is_count), ("samples", is_count)):
            if not ok(entry.get(key)):
                return f"shards[{i}] ({entry['name']}) has no valid {key!r}"
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        return "'splits' is not an object"
    for split, info in splits.items():
        if not isinstance(info, dict) or not isinstance(info.get("shards"), list) or not all(
            isinstance(n, str) and SHARD_NAME_RE.match(n) for n in info["shards"]
        ):
            return f"splits[{split!r}] has no list of shard names"
    if not isinstance(manifest.get("counts"), dict):
        return "'counts' is not an object"
    if not isinstance(manifest.get("options", {}), dict):
        return "'options' is not an object"
    max_side = manifest.get("options", {}).get("max_side")
    if max_side is not None and not (is_count(max_side) and max_side >= 1):
        return f"options.max_side is {max_side!r}, not a size in pixels"
    return None
