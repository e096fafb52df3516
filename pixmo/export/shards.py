"""Shards: planned up front from the sorted keys, then each written on its own (in any process).

Planning first is what lets shards be written in parallel and still come out the same every time:
a shard's name, split and exact list of samples depend only on the database and the options.
Members are written in key order, and within a sample in the order of their suffixes (as
webdataset's `TarWriter` does), with fixed times, owner and mode: POSIX ustar headers built from a
precomputed template (`TarMemberWriter`), byte for byte what `tarfile` writes for these members,
without importing webdataset (and torch) in every worker or building a `TarInfo` per member.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pixmo.db.session import Database
from pixmo.errors import BlobNotFoundError, StorageError
from pixmo.export.errors import ExportError
from pixmo.export.images import image_member
from pixmo.export.options import WebDatasetOptions
from pixmo.export.records import build_samples, count_rows, gc_paused, member_ext, split_of
from pixmo.export.select import Candidate
from pixmo.export.target import ExportTarget, HashingWriter
from pixmo.media import EXT_BY_MIME
from pixmo.storage import BlobStore

SPLITS = ("train", "validation")
# Fixed tar member metadata: the same database gives byte-identical shards.
MEMBER_MTIME = 0
MEMBER_OWNER = "pixmo"
MEMBER_MODE = 0o444
TAR_BLOCK = tarfile.BLOCKSIZE  # 512
TAR_RECORD = tarfile.RECORDSIZE  # 10240: tarfile pads the archive to a multiple of this
_MAX_NAME = 100
_MAX_SIZE = 8**11 - 1  # largest size an octal ustar field holds
_ZEROS = bytes(TAR_BLOCK)


def _ustar_template(owner: str, mode: int, mtime: int) -> tuple[bytes, bytes, int]:
    """The parts of a regular-file ustar header that never change, and their byte sum.

    Layout (POSIX ustar, as `tarfile` writes it in its default PAX format when no pax record is
    needed): name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] type[1] linkname[100]
    magic[8] uname[32] gname[32] devmajor[8] devminor[8] prefix[155], padded to 512 bytes.
    """
    middle = (
        b"%07o\0" % (mode & 0o7777) + b"%07o\0" % 0 + b"%07o\0" % 0  # mode, uid, gid
    )
    tail = (
        b"%011o\0" % mtime + b" " * 8 + tarfile.REGTYPE + b"\0" * 100 + tarfile.POSIX_MAGIC
        + owner.encode("ascii").ljust(32, b"\0") + owner.encode("ascii").ljust(32, b"\0")
        + b"\0" * 8 + b"\0" * 8 + b"\0" * 155
    )
    tail += b"\0" * (TAR_BLOCK - 100 - len(middle) - 12 - len(tail))
    return middle, tail, sum(middle) + sum(tail)


class TarMemberWriter:
    """Write regular-file members to a stream as an uncompressed tar, identical to `tarfile`'s output.

    Every member gets the same owner, group, mode and mtime; names are plain ASCII of at most 100
    bytes (sample keys are sha256 hex) and use the template; any other name or size falls back to
    `tarfile.TarInfo.tobuf`, so the output is always what ``tarfile.open(mode="w|")`` writes.
    """

    def __init__(
        self, out, *, owner: str = MEMBER_OWNER, mode: int = MEMBER_MODE, mtime: int = MEMBER_MTIME,  # noqa: ANN001
        buffer_size: int = 1 << 20,
    ) -> None:
        self.out = out
        self.offset = 0
        self.owner, self.mode, self.mtime = owner, mode, mtime
        self._middle, self._tail, self._sum = _ustar_template(owner, mode, mtime)
        # members are gathered and written (and hashed by the caller's stream) about a MiB at a
        # time: a write per member costs more than the copy of a small member into a buffer
        self.buffer_size = buffer_size
        self._parts: list[bytes] = []
        self._pending = 0

    def header(self, name: str, size: int) -> bytes:
        raw = name.encode("ascii", "replace") if name.isascii() else b""
        if not raw or len(raw) > _MAX_NAME or size > _MAX_SIZE or b"\0" in raw:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, self.mode, self.mtime
            info.uname = info.gname = self.owner
            return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        size_field = b"%011o\0" % size
        # NUL padding adds nothing to the checksum
        chksum = self._sum + sum(raw) + sum(size_field)
        # the checksum field counts as 8 spaces, then holds 6 octal digits, NUL and a space
        return (raw.ljust(_MAX_NAME, b"\0") + self._middle + size_field + self._tail[:12] + b"%06o\0 " % chksum
                + self._tail[20:])

    def add(self, name: str, data: bytes) -> None:
        """Append one member: header, data, NUL padding to the next 512-byte block."""
        size = len(data)
        pad = -size % TAR_BLOCK
        header = self.header(name, size)  # one block, more for a name that needs a PAX record
        parts = self._parts
        parts.append(header)
        parts.append(data)
        if pad:
            parts.append(_ZEROS[:pad])
        n = len(header) + size + pad
        self.offset += n
        self._pending += n
        if self._pending >= self.buffer_size:
            self.flush()

    def flush(self) -> None:
        """Write what is gathered so far to the stream."""
        if self._parts:
            self.out.write(b"".join(self._parts))
            self._parts.clear()
            self._pending = 0

    def close(self) -> None:
        """Two zero blocks, then zeros up to a whole 10 KiB record (as `tarfile` ends an archive)."""
        end = 2 * TAR_BLOCK
        end += -(self.offset + end) % TAR_RECORD
        self._parts.append(bytes(end))
        self.offset += end
        self.flush()


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
    projects: dict[str, int] = field(default_factory=dict)  # samples per project name
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


def _blob(store: BlobStore, key: str, what: str) -> bytes:
    try:
        return store.get_bytes(key)
    except BlobNotFoundError as exc:
        raise ExportError(f"{what}: blob {key} is missing from the store") from exc
    except StorageError as exc:
        raise ExportError(f"{what}: blob {key} cannot be read: {exc}") from exc


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
    with gc_paused():
        return _write_shard(plan, db=db, store=store, target=target, options=options, as_of=as_of,
                            usernames=usernames, on_sample=on_sample)


def _write_shard(
    plan: ShardPlan,
    *,
    db: Database,
    store: BlobStore,
    target: ExportTarget,
    options: WebDatasetOptions,
    as_of: dt.datetime | None,
    usernames: dict[int, str] | None,
    on_sample: Callable[[int], None] | None,
) -> ShardResult:
    with db.session() as session:
        samples = build_samples(
            session, plan.image_ids, val_fraction=options.val_fraction, with_audio=options.with_audio,
            as_of=as_of, usernames=usernames,
        )
    if len(samples) != plan.samples:
        raise ExportError(f"{plan.name}: {plan.samples - len(samples)} image(s) disappeared from the database during the export")
    result = ShardResult(plan.name, plan.split, plan.index, plan.samples, 0, "", plan.first_key, plan.last_key)
    statuses: dict[str, int] = {}
    projects: dict[str, int] = {}
    asr, llm, prompts = set(), set(), set()
    with target.writer(plan.name) as raw:
        out = HashingWriter(raw, plan.name, target.url)
        tar = TarMemberWriter(out)
        for s in samples:
            data = _blob(store, s.image_storage_key, f"image {s.key}")
            if hashlib.sha256(data).hexdigest() != s.key:
                raise ExportError(f"image {s.key}: stored bytes do not match its sha256 ({s.image_storage_key})")
            original_ext = EXT_BY_MIME.get(s.image_mime, "bin")
            try:
                image = image_member(data, original_ext, member_ext(s.image_mime), options.max_side)
            except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds; the sample must be named
                raise ExportError(f"image {s.key}: cannot be written as {member_ext(s.image_mime)}: "
                                  f"{type(exc).__name__}: {exc}") from exc
            result.reencoded += image is not data
            members = {s.image_ext: image, "json": s.json_bytes, "txt": s.caption.encode("utf-8")}
            for a in s.audio:
                audio = _blob(store, a.storage_key, f"recording of {s.key}")
                members[a.suffix] = audio
                result.audio_bytes += len(audio)
                result.audio_files += 1
            for suffix in sorted(members):  # the member order of webdataset's TarWriter
                tar.add(f"{s.key}.{suffix}", members[suffix])
            result.image_bytes += len(image)
            rec = s.data
            statuses[rec["review_status"]] = statuses.get(rec["review_status"], 0) + 1
            for name in rec["projects"]:
                projects[name] = projects.get(name, 0) + 1
            lineage = rec["lineage"]
            asr.update(lineage["asr_models"])
            llm.update(lineage["llm_models"])
            prompts.update(lineage["prompt_versions"])
            if on_sample is not None:
                on_sample(1)
        tar.close()
    result.bytes, result.sha256 = out.size, out.hash.hexdigest()
    result.rows = count_rows(s.data for s in samples)
    result.review_status = dict(sorted(statuses.items()))
    result.projects = dict(sorted(projects.items()))
    result.asr_models, result.llm_models, result.prompt_versions = sorted(asr), sorted(llm), sorted(prompts)
    return result
