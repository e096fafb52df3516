"""`verify_export`: re-read a webdataset export and check it against its manifest, reporting every problem.

Checks: the manifest itself (snapshot id, totals); every listed shard exists, no unlisted shard or
leftover temporary file; each shard's sha256, size and sample count; members well formed and in
key order; every sample's JSON valid against the checked-in JSON Schema
(``schemas/json/export_sample.json``, with the ``jsonschema-rs`` package when it is installed, else
with the pydantic model) and consistent with its key and split; every image decodes (and is the
original bytes unless it was resized or converted); every audio member matches its recording's
sha256; row counts and review statuses add up to the manifest's.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from pixmo.export.errors import ManifestError
from pixmo.export.manifest import MANIFEST_NAME, SHARD_NAME_RE, is_count, read_manifest, snapshot_id
from pixmo.progress import Progress
from pixmo.export.records import ROW_KINDS, member_ext, split_of
from pixmo.export.target import ExportTarget, open_target
from pixmo.media import EXT_BY_MIME, ROTATING_ORIENTATIONS, allow_pixels, exif_orientation
from pixmo.storage import BlobStore
from schemas.export import EXPORT_SCHEMA_VERSION

SCHEMA_FILE = "export_sample.json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an export: where (shard, sample key) and what."""

    shard: str | None
    key: str | None
    message: str

    def __str__(self) -> str:
        where = ": ".join(x for x in (self.shard, self.key) if x)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class VerifyReport:
    """The outcome of `verify_export`; ``ok`` when no problem was found."""

    out: str
    snapshot_id: str | None = None
    validator: str = ""
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_shards(self) -> list[str]:
        return sorted({p.shard for p in self.problems if p.shard})


@dataclass
class _ShardCheck:
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_KINDS, 0))
    review_status: dict[str, int] = field(default_factory=dict)
    projects: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def schema_validator() -> tuple[str, Callable[[Any], list[str]]]:
    """(description, validate) where validate returns the error messages for one JSON record.

    A record is checked against the checked-in JSON Schema (jsonschema-rs, formats included), and
    one that passes it against the pydantic model too: the model's own rules (the key is the
    image's sha256, a not-present set has no points) are more than a JSON Schema can say.
    """
    from pydantic import ValidationError as PydanticValidationError

    from schemas.export import ExportSample
    from schemas.generate import SCHEMA_DIR

    def with_pydantic(obj: Any) -> list[str]:
        try:
            ExportSample.model_validate(obj)
        except PydanticValidationError as exc:
            return [f"{'/'.join(map(str, e['loc'])) or '(record)'}: {e['msg']}" for e in exc.errors()]
        return []

    try:
        import jsonschema_rs
        from importlib.metadata import version
    except ImportError:
        return "pydantic model schemas.export.ExportSample (jsonschema-rs is not installed)", with_pydantic

    schema = json.loads((SCHEMA_DIR / SCHEMA_FILE).read_text(encoding="utf-8"))
    # jsonschema-rs (compiled): ≈ 0.05 ms a record where the pure-Python jsonschema took ≈ 2.4 ms
    validator = jsonschema_rs.validator_for(schema, validate_formats=True)

    def with_both(obj: Any) -> list[str]:
        errors = [f"{'/'.join(map(str, e.instance_path)) or '(record)'}: {e.message}" for e in validator.iter_errors(obj)]
        return errors or with_pydantic(obj)

    return (f"jsonschema-rs {version('jsonschema-rs')} against schemas/json/{SCHEMA_FILE}, "
            "then the rules of schemas.export.ExportSample"), with_both


class _HashingReader:
    """Read-through wrapper that hashes and counts everything read."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _check_image(data: bytes, key: str, record: dict[str, Any], max_side: int | None) -> list[str]:
    from PIL import Image

    image = record["image"]
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            size = im.size
            if exif_orientation(im, data) in ROTATING_ORIENTATIONS:
                size = (size[1], size[0])  # the record holds the size as displayed, as points are clicked
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the finding
        return [f"image does not decode: {type(exc).__name__}: {exc}"]
    problems = []
    original = (image["width"], image["height"])
    kept = member_ext(image["mime"]) == EXT_BY_MIME.get(image["mime"]) and (max_side is None or max(original) <= max_side)
    if kept:
        if hashlib.sha256(data).hexdigest() != key:
            problems.append("image bytes do not match the key (sha256 of the original image)")
        if size != original:
            problems.append(f"image is {size[0]}x{size[1]}, the record says {original[0]}x{original[1]}")
    elif max_side is not None and max(size) > max_side:
        problems.append(f"image is {size[0]}x{size[1]}, larger than max_side {max_side}")
    return problems


def _check_sample(
    key: str, members: dict[str, bytes], split: str, validate: Callable[[Any], list[str]], max_side: int | None,
    check: _ShardCheck, shard: str, val_fraction: float | None = None,
) -> None:
    def bad(message: str) -> None:
        check.problems.append(Problem(shard, key, message))

    if "json" not in members:
        bad("no .json member")
        return
    try:
        record = json.loads(members.pop("json"))
    except (ValueError, UnicodeDecodeError) as exc:
        bad(f"json member is not JSON: {exc}")
        return
    errors = validate(record)
    for e in errors[:5]:
        bad(f"json does not match the schema: {e}")
    if errors or not isinstance(record, dict):
        return
    if record["key"] != key:
        bad(f"json key {record['key']} differs from the member key")
    if record["split"] != split:
        bad(f"json split {record['split']!r} but the shard is {split!r}")
    elif val_fraction is not None and split_of(key, val_fraction) != split:
        bad(f"in {split!r}, but the hash of its key puts it in {split_of(key, val_fraction)!r} "
            f"(val_fraction {val_fraction})")
    for kind in ROW_KINDS:
        check.rows[kind] += len(record[kind])
    check.review_status[record["review_status"]] = check.review_status.get(record["review_status"], 0) + 1
    for name in record["projects"]:
        check.projects[name] = check.projects.get(name, 0) + 1
    ext = record["image"]["ext"]
    if ext not in members:
        bad(f"no .{ext} image member")
    else:
        for message in _check_image(members.pop(ext), key, record, max_side):
            bad(message)
    if "txt" not in members:
        bad("no .txt member")
    else:
        try:
            members.pop("txt").decode("utf-8")
        except UnicodeDecodeError:
            bad("txt member is not UTF-8")
    for rec in record["recordings"]:
        name = rec.get("audio_member")
        if not name:
            continue
        suffix = name.split(".", 1)[1] if name.startswith(f"{key}.") else None
        if suffix not in members:
            bad(f"audio member {name} is missing")
        elif hashlib.sha256(members.pop(suffix)).hexdigest() != rec["sha256"]:
            bad(f"audio member {name} does not match its recording's sha256")
    for suffix in sorted(members):
        bad(f"unexpected member {key}.{suffix}")


def _check_shard(
    target: ExportTarget, entry: dict[str, Any], validate: Callable[[Any], list[str]], max_side: int | None,
    advance: Callable[[int], None], val_fraction: float | None = None,
) -> _ShardCheck:
    name, split = entry["name"], entry["split"]
    check = _ShardCheck()
    keys: list[str] = []
    seen: set[str] = set()
    try:
        raw = target.open(name)
    except Exception as exc:  # noqa: BLE001 - a missing/unreadable shard is a finding
        check.problems.append(Problem(name, None, f"cannot open the shard: {exc}"))
        return check
    with raw:
        reader = _HashingReader(raw)
        current: str | None = None
        members: dict[str, bytes] = {}

        def finish() -> None:
            if current is not None:
                if list(members) != sorted(members):  # the writer puts a sample's members in suffix order
                    check.problems.append(Problem(name, current, f"members out of order: {', '.join(members)}"))
                _check_sample(current, members, split, validate, max_side, check, name, val_fraction)
                check.samples += 1
                advance(1)

        try:
            with tarfile.open(fileobj=reader, mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        check.problems.append(Problem(name, None, f"member {info.name} is not a regular file"))
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    if "." not in base:
                        check.problems.append(Problem(name, None, f"member {info.name} has no extension"))
                        continue
                    key, suffix = info.name.split(".", 1)
                    if key != current:
                        finish()
                        if key in seen:
                            check.problems.append(Problem(name, key, "sample key appears twice"))
                        current, members = key, {}
                        keys.append(key)
                        seen.add(key)
                    if suffix in members:
                        check.problems.append(Problem(name, key, f"member {info.name} appears twice"))
                    members[suffix] = tar.extractfile(info).read()
                finish()
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            check.problems.append(Problem(name, None, f"shard is not a readable tar: {type(exc).__name__}: {exc}"))
        try:
            reader.drain()
        except OSError as exc:
            check.problems.append(Problem(name, None, f"cannot read the shard to its end: {exc}"))
    check.bytes, check.sha256 = reader.size, reader.hash.hexdigest()
    if check.sha256 != entry["sha256"]:
        check.problems.append(Problem(name, None, f"sha256 {check.sha256} differs from the manifest's {entry['sha256']}"))
    if check.bytes != entry["bytes"]:
        check.problems.append(Problem(name, None, f"{check.bytes} bytes, the manifest says {entry['bytes']}"))
    if check.samples != entry["samples"]:
        check.problems.append(Problem(name, None, f"{check.samples} samples, the manifest says {entry['samples']}"))
    if keys != sorted(keys):
        check.problems.append(Problem(name, None, "samples are not in key order"))
    if keys and (keys[0] != entry.get("first_key") or keys[-1] != entry.get("last_key")):
        check.problems.append(Problem(name, None, "first/last sample keys differ from the manifest"))
    return check


def _check_totals(manifest: dict[str, Any], checks: dict[str, _ShardCheck], report: VerifyReport) -> None:
    def bad(message: str) -> None:
        report.problems.append(Problem(MANIFEST_NAME, None, message))

    if manifest.get("snapshot_id") != snapshot_id(manifest):
        bad("snapshot_id does not match the manifest's content (the manifest was edited)")
    counts = manifest.get("counts", {})
    shards = manifest.get("shards", [])
    if counts.get("shards") != len(shards):
        bad(f"counts.shards is {counts.get('shards')} but {len(shards)} shards are listed")
    if counts.get("samples") != sum(s["samples"] for s in shards):
        bad("counts.samples differs from the sum of the shards' samples")
    for split, info in manifest.get("splits", {}).items():
        listed = [s["name"] for s in shards if s["split"] == split]
        if info.get("shards") != listed:
            bad(f"splits.{split}.shards differs from the shard list")
        if counts.get(split) != sum(s["samples"] for s in shards if s["split"] == split):
            bad(f"counts.{split} differs from the sum of its shards' samples")
    for split in manifest.get("splits", {}):
        # each shard's keys are checked in order and unique; so are the split's, when each shard
        # begins after the one before it ends (a sample in two shards, or shards swapped, passed)
        listed = [s for s in shards if s["split"] == split]
        for before, after in zip(listed, listed[1:]):
            if str(before.get("last_key")) >= str(after.get("first_key")):
                bad(f"{after['name']} does not begin after {before['name']} ends: keys repeat or shards are out of order")
    if any(c.problems for c in checks.values()):
        return  # row totals over damaged shards would only repeat the problems found in them
    for kind in ROW_KINDS:
        found = sum(c.rows[kind] for c in checks.values())
        if counts.get(kind) != found:
            bad(f"counts.{kind} is {counts.get(kind)} but the samples hold {found}")
    statuses: dict[str, int] = {}
    for c in checks.values():
        for k, v in c.review_status.items():
            statuses[k] = statuses.get(k, 0) + v
    if counts.get("review_status") != dict(sorted(statuses.items())):
        bad(f"counts.review_status is {counts.get('review_status')} but the samples say {dict(sorted(statuses.items()))}")
    projects: dict[str, int] = {}
    for c in checks.values():
        for k, v in c.projects.items():
            projects[k] = projects.get(k, 0) + v
    if "projects" in counts and counts["projects"] != dict(sorted(projects.items())):  # absent before 2026-12
        bad(f"counts.projects is {counts['projects']} but the samples say {dict(sorted(projects.items()))}")


def _no_schema(record: Any) -> list[str]:
    """Without the record's own schema: only the fields the rest of the check reads."""
    if not isinstance(record, dict):
        return ["not an export record"]
    wanted = {"key": str, "split": str, "review_status": str, "projects": list, "image": dict,
              **dict.fromkeys(ROW_KINDS, list)}
    wrong = [k for k, kind in wanted.items() if not isinstance(record.get(k), kind)]
    if not wrong and not isinstance(record["image"].get("ext"), str):
        wrong.append("image.ext")
    return [f"{k}: missing or of the wrong type" for k in wrong]


def verify_export(
    out: str | ExportTarget | BlobStore, *, workers: int = 2, progress: bool | Callable[[int], None] = False
) -> VerifyReport:
    """Check the webdataset export at ``out`` (folder or ``s3://``); the report lists every problem found."""
    allow_pixels()
    target = open_target(out)
    report = VerifyReport(out=target.url)
    report.validator, validate = schema_validator()
    try:
        manifest = read_manifest(target)
    except ManifestError as exc:
        report.problems.append(Problem(MANIFEST_NAME, None, str(exc)))
        return report
    report.snapshot_id = manifest.get("snapshot_id")
    shards = manifest.get("shards", [])
    version = manifest.get("schema_version")
    if version != EXPORT_SCHEMA_VERSION:  # one finding, not one per record against the wrong schema
        report.problems.append(Problem(MANIFEST_NAME, None, (
            f"written with export schema version {version!r} (pixmo {manifest.get('code_version')}); this pixmo "
            f"checks version {EXPORT_SCHEMA_VERSION}: verify it with the pixmo that wrote it, or export again; "
            "records were not checked against the schema")))
        validate = _no_schema
    seen: set[str] = set()
    for s in shards:
        if s["name"] in seen:
            report.problems.append(Problem(s["name"], None, "shard is listed more than once in the manifest"))
        seen.add(s["name"])
    max_side = (manifest.get("options") or {}).get("max_side")
    val_fraction = (manifest.get("options") or {}).get("val_fraction")
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction < 1:
        val_fraction = None  # no split to recompute (an older or edited manifest): the shards' own splits stand
    listed = {s["name"] for s in shards}
    for name in target.names():
        if SHARD_NAME_RE.match(name) and name not in listed:
            report.problems.append(Problem(name, None, "shard file is not listed in the manifest"))
    for name in target.temp_names():
        if "/" not in name:  # shards live at the top; a subfolder's are an HF subset's (or another export's)
            report.problems.append(Problem(name, None, "leftover temporary file from an interrupted export"))
    total = manifest["counts"].get("samples")  # a bad count is reported by _check_totals, not trusted here
    with Progress("verify", total if is_count(total) else None, progress) as bar:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = {s["name"]: pool.submit(_check_shard, target, s, validate, max_side, bar.advance, val_fraction)
                       for s in shards}
            checks = {name: fut.result() for name, fut in futures.items()}
    for check in checks.values():  # in manifest order, as submitted
        report.problems.extend(check.problems)
    report.shards = len(shards)
    report.samples = sum(c.samples for c in checks.values())
    report.bytes = sum(c.bytes for c in checks.values())
    _check_totals(manifest, checks, report)
    return report
