"""Shards: planned up front from the sorted keys, then each written on its own (in any process).

Planning first is what lets shards be written in parallel and still come out the same every time:
a shard's name, split and exact list of samples depend only on the database and the options.
Members are written by webdataset's `TarWriter` with fixed times, owner and mode, in key order.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from pixmo.db.session import Database
from pixmo.errors import BlobNotFoundError
from pixmo.export.errors import ExportError
from pixmo.export.images import image_member
from pixmo.export.options import WebDatasetOptions
from pixmo.export.records import build_samples, count_rows, member_ext, split_of
from pixmo.export.select import Candidate
from pixmo.export.target import ExportTarget
from pixmo.media import EXT_BY_MIME
from pixmo.storage import BlobStore, LocalStore, validate_key

SPLITS = ("train", "validation")
# Fixed tar member metadata: the same database gives byte-identical shards.
MEMBER_MTIME = 0
MEMBER_OWNER = "pixmo"
MEMBER_MODE = 0o444


def shard_name(split: str, index: int) -> str:
    """``train-000003.tar``."""
    return f"{split}-{index:06d}.tar"


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, split, and the images (in key order) that go in it."""

    name: str
    split: str
    index: int
    image_ids: tuple[int, ...]
    first_key: str
    last_key: str
    est_bytes: int

    @property
    def samples(self) -> int:
        return len(self.image_ids)


@dataclass
class ShardResult:
    """What was written: per-shard checksum, sizes, counts and the lineage seen."""

    name: str
    split: str
    index: int
    samples: int
    bytes: int
    sha256: str
    first_key: str
    last_key: str
    image_bytes: int = 0
    audio_bytes: int = 0
    audio_files: int = 0
    reencoded: int = 0  # images resized or converted instead of copied
    rows: dict[str, int] = field(default_factory=dict)
    review_status: dict[str, int] = field(default_factory=dict)
    asr_models: list[str] = field(default_factory=list)
    llm_models: list[str] = field(default_factory=list)
    prompt_versions: list[str] = field(default_factory=list)

    def manifest_entry(self) -> dict:
        return {
            "name": self.name, "split": self.split, "samples": self.samples, "bytes": self.bytes,
            "sha256": self.sha256, "first_key": self.first_key, "last_key": self.last_key,
        }


def plan_shards(candidates: Sequence[Candidate], *, maxcount: int, maxsize: int, val_fraction: float) -> list[ShardPlan]:
    """Cut the key-sorted candidates of each split into shards of at most ``maxcount`` samples and
    (by estimate) ``maxsize`` bytes; a sample larger than ``maxsize`` gets a shard of its own."""
    by_split: dict[str, list[Candidate]] = {s: [] for s in SPLITS}
    for c in sorted(candidates, key=lambda c: c.key):
        by_split[split_of(c.key, val_fraction)].append(c)
    plans: list[ShardPlan] = []
    for split in SPLITS:
        groups: list[list[Candidate]] = []
        size = 0
        for c in by_split[split]:
            if not groups or len(groups[-1]) >= maxcount or size + c.est_bytes > maxsize:
                groups.append([])
                size = 0
            groups[-1].append(c)
            size += c.est_bytes
        for index, group in enumerate(groups):
            plans.append(ShardPlan(
                shard_name(split, index), split, index, tuple(c.image_id for c in group),
                group[0].key, group[-1].key, sum(c.est_bytes for c in group),
            ))
    return plans


class _HashingWriter:
    """Write-through file wrapper that hashes and counts what the tar writer emits."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def _blob(store: BlobStore, key: str, what: str) -> bytes:
    try:
        if isinstance(store, LocalStore):
            # fast path: validate_key rules out absolute and '..' keys, and resolving every
            # path (LocalStore.path_for) costs more than reading a small image
            try:
                with open(os.path.join(store.root, validate_key(key)), "rb") as f:
                    return f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
                raise BlobNotFoundError(key) from exc
        return store.get_bytes(key)
    except BlobNotFoundError as exc:
        raise ExportError(f"{what}: blob {key} is missing from the store") from exc


def write_shard(
    plan: ShardPlan,
    *,
    db: Database,
    store: BlobStore,
    target: ExportTarget,
    options: WebDatasetOptions,
    as_of: dt.datetime | None,
    usernames: dict[int, str] | None = None,
    on_sample: Callable[[int], None] | None = None,
) -> ShardResult:
    """Build the shard's samples from the database and write them to ``target`` atomically."""
    from webdataset import TarWriter

    with db.session() as session:
        samples = build_samples(
            session, plan.image_ids, val_fraction=options.val_fraction, with_audio=options.with_audio,
            as_of=as_of, usernames=usernames,
        )
    if len(samples) != plan.samples:
        raise ExportError(f"{plan.name}: {plan.samples - len(samples)} image(s) disappeared from the database during the export")
    result = ShardResult(plan.name, plan.split, plan.index, plan.samples, 0, "", plan.first_key, plan.last_key)
    statuses: dict[str, int] = {}
    asr, llm, prompts = set(), set(), set()
    with target.writer(plan.name) as raw:
        out = _HashingWriter(raw)
        with TarWriter(out, user=MEMBER_OWNER, group=MEMBER_OWNER, mode=MEMBER_MODE, mtime=MEMBER_MTIME, encoder=False) as tar:
            for s in samples:
                data = _blob(store, s.image_storage_key, f"image {s.key}")
                if hashlib.sha256(data).hexdigest() != s.key:
                    raise ExportError(f"image {s.key}: stored bytes do not match its sha256 ({s.image_storage_key})")
                original_ext = EXT_BY_MIME.get(s.image_mime, "bin")
                image = image_member(data, original_ext, member_ext(s.image_mime), options.max_side)
                result.reencoded += image is not data
                sample = {"__key__": s.key, s.image_ext: image, "json": s.json_bytes, "txt": s.caption.encode("utf-8")}
                for a in s.audio:
                    audio = _blob(store, a.storage_key, f"recording of {s.key}")
                    sample[a.suffix] = audio
                    result.audio_bytes += len(audio)
                    result.audio_files += 1
                tar.write(sample)
                result.image_bytes += len(image)
                rec = s.record
                statuses[rec.review_status] = statuses.get(rec.review_status, 0) + 1
                asr.update(rec.lineage.asr_models)
                llm.update(rec.lineage.llm_models)
                prompts.update(rec.lineage.prompt_versions)
                if on_sample is not None:
                    on_sample(1)
    result.bytes, result.sha256 = out.size, out.hash.hexdigest()
    result.rows = count_rows(s.record for s in samples)
    result.review_status = dict(sorted(statuses.items()))
    result.asr_models, result.llm_models, result.prompt_versions = sorted(asr), sorted(llm), sorted(prompts)
    return result
