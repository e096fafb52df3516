"""From database rows to export records: one `ExportSample` per image, as a checked plain dict.

Rules that every exporter shares live here:

- **review status** of an image: the latest verdict on each reviewed row counts; ``flagged`` if any
  is flagged, else ``approved`` if any is approved, else ``rejected`` if all are rejected, else
  ``pending`` (nothing reviewed).
- **best caption** (the ``.txt`` member, the ``caption`` of PixMo-Cap rows): captions rejected or
  flagged by a reviewer, or written from a rejected transcript or recording, are never used. Of
  the rest, ``merged`` beats ``cleaned`` (it draws on several annotators), then ``human`` beats
  ``llm`` beats ``rule`` (a person's caption is the most trusted), then the newest. With no usable
  caption, the longest usable transcript is used (of each recording, its newest usable transcript);
  with none, the text is empty.
- **transcripts** that go with a caption (PixMo-Cap's ``transcripts``, the loader's targets): the
  newest usable transcript of each recording, once, whichever ASR models transcribed it.
- **QA** that is trained on: accepted, not rejected or flagged, and for CapQA not written from a
  rejected or flagged caption (`pixmo.verdicts.usable_qa`).
- **split**: ``validation`` when a stable hash of the key falls below the validation fraction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import orjson
import pydantic_core
from sqlalchemy import Text, select, true, type_coerce
from sqlalchemy.orm import Session

from pixmo import fastjson
from pixmo.db.models import (
    as_utc,
    Caption,
    Image,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
    User,
)
from pixmo.db.queries import id_chunks
from pixmo.export.errors import ExportError
from pixmo.llm.faithfulness import stored_score
from pixmo.media import EXT_BY_MIME
from pixmo.verdicts import newest_per_recording, record_verdicts, unusable_captions, usable_transcripts
from schemas.export import EXPORT_SCHEMA_VERSION, ExportSample

# image formats written as they are; any other format is converted to PNG for the image member
MEMBER_EXTS = ("jpg", "png", "webp")
AUDIO_EXT_BY_MIME = {
    "audio/webm": "webm",
    "audio/ogg": "ogg",
    "audio/flac": "flac",
    "audio/x-flac": "flac",
    "audio/wav": "wav",
    "audio/x-wav": "wav",
    "audio/wave": "wav",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
}
KIND_RANK = {"cleaned": 0, "merged": 1}
PRODUCER_RANK = {"rule": 0, "llm": 1, "human": 2}


def split_of(key: str, val_fraction: float) -> str:
    """``validation`` or ``train``, from a stable hash of the sample key."""
    if val_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.sha256(b"pixmo-split:" + key.encode("ascii")).digest()[:8], "big")
    return "validation" if h / 2**64 < val_fraction else "train"


def member_ext(mime: str) -> str:
    """Extension of the image member for an image of ``mime`` (jpg, png or webp)."""
    ext = EXT_BY_MIME.get(mime, "png")
    return ext if ext in MEMBER_EXTS else "png"


def audio_ext(mime: str) -> str:
    """Extension of an audio member (``audio/webm;codecs=opus`` -> ``webm``)."""
    base = mime.split(";")[0].strip().lower()
    return AUDIO_EXT_BY_MIME.get(base, base.split("/")[-1] or "bin")


def _in_time_order(reviews: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(reviews, key=lambda r: (as_utc(r["created_at"]), r["id"]))


def latest_verdicts(reviews: Iterable[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """(target_type, target_id) -> the newest verdict on it."""
    return record_verdicts(_in_time_order(reviews))


def review_status(verdicts: dict[tuple[str, int], str]) -> str:
    """The image's review status from the latest verdicts on its rows (see the module doc)."""
    values = set(verdicts.values())
    if not values:
        return "pending"
    if "flagged" in values:
        return "flagged"
    if "approved" in values:
        return "approved"
    return "rejected"


def flag_names(flags: Any) -> list[str]:
    """Quality flags as strings (a flag stored as ``{"name": ...}`` gives its name)."""
    out = []
    for f in flags or []:
        if isinstance(f, str):
            out.append(f)
        elif isinstance(f, dict) and isinstance(f.get("name") or f.get("flag"), str):
            out.append(f.get("name") or f.get("flag"))
        else:
            out.append(json.dumps(f, sort_keys=True))
    return out


def _sorted_keys(value: Any) -> Any:
    """Dicts with sorted keys, recursively: PostgreSQL's JSONB and SQLite's JSON order keys differently."""
    if isinstance(value, dict):
        return {k: _sorted_keys(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(v) for v in value]
    return value


def _faithfulness(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return stored_score(value)


@dataclass
class ImageRows:
    """Every exported row of one image, as plain dicts straight from the database.

    Read-only: decoded JSON values may be shared between rows (see `_decode_json`).
    """

    image: dict[str, Any]
    projects: list[str] = field(default_factory=list)
    captions: list[dict[str, Any]] = field(default_factory=list)
    recordings: list[dict[str, Any]] = field(default_factory=list)
    transcripts: list[dict[str, Any]] = field(default_factory=list)
    point_sets: list[dict[str, Any]] = field(default_factory=list)
    qa: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class AudioMember:
    suffix: str  # member name after the key, e.g. ``audio0.ogg``
    storage_key: str
    sha256: str


@dataclass
class BuiltSample:
    """One sample ready to write: its record (a plain dict shaped as `ExportSample`), JSON bytes,
    best caption and blob keys."""

    key: str
    data: dict[str, Any]
    json_bytes: bytes
    caption: str
    caption_id: int | None  # the caption row ``caption`` is; None when it fell back to a transcript
    transcripts: list[str]  # texts of the usable transcripts, the newest of each recording, by id
    image_storage_key: str
    image_ext: str
    image_mime: str
    audio: list[AudioMember]

    @cached_property
    def record(self) -> ExportSample:
        """The record as a validated `ExportSample` (made on first use)."""
        return ExportSample.model_validate(self.data)


# JSON columns of the export (see `_COLUMNS`). On SQLite they are read as their stored text and
# decoded here, through a small cache: most hold the same few short values (``[]``, ``{}``), which
# SQLAlchemy would otherwise parse with ``json.loads`` one by one. Cached values are shared between
# rows, so rows are read-only: `build_sample` copies everything it puts in a record.
_JSON_COLUMNS = frozenset({"source_transcript_ids", "faithfulness", "flags", "points", "metrics"})
_JSON_CACHE_MAX_LEN = 64
_JSON_CACHE_MAX_ITEMS = 4096
_json_cache: dict[str, Any] = {}


def _decode_json(text: str | None) -> Any:
    if text is None or not isinstance(text, str):
        return text  # SQL NULL, or a value the driver already decoded
    value = _json_cache.get(text)
    if value is None:
        value = fastjson.loads(text)  # exactly what SQLAlchemy's json.loads would give
        if len(text) <= _JSON_CACHE_MAX_LEN and len(_json_cache) < _JSON_CACHE_MAX_ITEMS and value is not None:
            _json_cache[text] = value
    return value


def _rows(session: Session, stmt) -> list[dict[str, Any]]:  # noqa: ANN001
    # Core execution, one fetchall() and one keys() call: the ORM and RowMapping cost more than the query here
    result = session.connection().execute(stmt)
    keys = list(result.keys())
    rows = result.fetchall()
    json_at = [i for i, k in enumerate(keys) if k in _JSON_COLUMNS] if _raw_json(session) else []
    if not json_at:
        return [dict(zip(keys, row)) for row in rows]
    out = []
    for row in rows:
        values = list(row)
        for i in json_at:
            values[i] = _decode_json(values[i])
        out.append(dict(zip(keys, values)))
    return out


def _raw_json(session: Session) -> bool:
    """Whether JSON columns are read as text (SQLite); PostgreSQL's driver decodes JSONB itself."""
    return session.get_bind().dialect.name == "sqlite"


def load_usernames(session: Session) -> dict[int, str]:
    """user id -> username (small table; read once per worker)."""
    return dict(session.execute(select(User.id, User.username)).all())


def load_rows(session: Session, image_ids: Sequence[int], as_of: dt.datetime | None = None) -> dict[int, ImageRows]:
    """Every row of these images created before ``as_of``, grouped per image (bulk queries)."""
    out: dict[int, ImageRows] = {}
    for chunk in id_chunks(list(image_ids)):
        _load_chunk(session, chunk, as_of, out)
    return out


def _before(column, as_of):  # noqa: ANN001, ANN202
    return column < as_of if as_of is not None else true()


# Only the columns a record needs: no segments, messages or revisions (large JSON, not exported).
_COLUMNS = {
    "images": ("id", "sha256", "storage_key", "width", "height", "mime", "bytes", "source_url", "source"),
    "captions": ("id", "image_id", "kind", "text", "model", "prompt_version", "produced_by",
                 "source_transcript_ids", "faithfulness", "flags"),
    "recordings": ("id", "image_id", "user_id", "storage_key", "sha256", "mime", "duration_s"),
    "point_sets": ("id", "image_id", "user_id", "label", "points", "not_present", "method"),
    "qa_pairs": ("id", "image_id", "source", "question", "answer", "model", "prompt_version", "status", "caption_id"),
    "reviews": ("id", "image_id", "target_type", "target_id", "verdict", "reason", "reviewer_id", "created_at"),
    "transcripts": ("id", "recording_id", "text", "language", "asr_model", "metrics", "flags"),
}


def _cols(table, raw_json: bool = False) -> list:  # noqa: ANN001
    return [
        type_coerce(table.c[name], Text).label(name) if raw_json and name in _JSON_COLUMNS else table.c[name]
        for name in _COLUMNS[table.name]
    ]


def _load_chunk(session: Session, ids: Sequence[int], as_of: dt.datetime | None, out: dict[int, ImageRows]) -> None:
    raw = _raw_json(session)
    img = Image.__table__
    for row in _rows(session, select(*_cols(img)).where(img.c.id.in_(ids))):
        out[row["id"]] = ImageRows(image=row)
    project_rows = session.connection().execute(
        select(ProjectImage.image_id, Project.name)
        .join(Project, Project.id == ProjectImage.project_id)
        .where(ProjectImage.image_id.in_(ids), _before(ProjectImage.created_at, as_of))
    ).all()
    for image_id, name in project_rows:
        out[image_id].projects.append(name)

    def grouped(table, attr: str, *where) -> None:  # noqa: ANN001
        stmt = select(*_cols(table, raw)).where(table.c.image_id.in_(ids), _before(table.c.created_at, as_of), *where)
        for row in _rows(session, stmt.order_by(table.c.id)):
            getattr(out[row["image_id"]], attr).append(row)

    cap, rec, ps, qa, rev = (m.__table__ for m in (Caption, Recording, PointSet, QAPair, Review))
    grouped(cap, "captions", cap.c.status == "ok")
    grouped(rec, "recordings")
    grouped(ps, "point_sets")
    grouped(qa, "qa", qa.c.status != "failed")
    grouped(rev, "reviews")
    tr = Transcript.__table__
    stmt = (
        select(*_cols(tr, raw), rec.c.image_id.label("image_id"), rec.c.duration_s.label("duration_s"))
        .join(rec, rec.c.id == tr.c.recording_id)
        .where(rec.c.image_id.in_(ids), tr.c.status == "ok", _before(tr.c.created_at, as_of))
        .order_by(tr.c.id)
    )
    for row in _rows(session, stmt):
        out[row["image_id"]].transcripts.append(row)


def best_caption(rows: ImageRows, verdicts: dict[tuple[str, int], str] | None = None) -> str:
    """The text of the best usable caption of an image (see the module doc), or ``""``."""
    if verdicts is None:
        verdicts = latest_verdicts(rows.reviews)
    return _best_caption(rows, verdicts, usable_transcripts(rows.transcripts, verdicts))[0]


def best_caption_of(session: Session, image_id: int) -> tuple[str, int | None]:
    """`best_caption` of one image read from the database now: (text, caption id or None)."""
    rows = load_rows(session, [image_id]).get(image_id)
    if rows is None:
        return "", None
    verdicts = latest_verdicts(rows.reviews)
    return _best_caption(rows, verdicts, usable_transcripts(rows.transcripts, verdicts))


def _best_caption(
    rows: ImageRows, verdicts: dict[tuple[str, int], str], good_transcripts: list[dict[str, Any]]
) -> tuple[str, int | None]:
    """(text, id of the caption row it is; None when it is a transcript's text, or empty)."""
    bad = unusable_captions(rows.captions, rows.transcripts, verdicts)
    candidates = []
    for c in rows.captions:
        if not c["text"].strip() or c["id"] in bad:
            continue
        candidates.append((KIND_RANK.get(c["kind"], 0), PRODUCER_RANK.get(c["produced_by"], 0), c["id"], c["text"]))
    if candidates:
        best = max(candidates)
        return best[3].strip(), best[2]
    texts = [t["text"].strip() for t in newest_per_recording(good_transcripts) if t["text"].strip()]
    return (max(texts, key=len) if texts else ""), None


_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def _sha(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise ExportError(f"{what}: not a lower-case hex sha256: {value!r}")
    return value


def _number(value: Any, what: str, *, low: float = 0.0, high: float = math.inf, optional: bool = False) -> float | None:
    if type(value) is float and low <= value <= high and value < math.inf:
        return value  # the usual case, settled without the checks below
    if value is None and optional:
        return None
    if isinstance(value, str):  # the model's lax mode takes numeric strings
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high or math.isinf(value):
        bounds = f"in [{low}, {high}]" if high != math.inf else f">= {low}"
        raise ExportError(f"{what}: {value!r} is not a finite number {bounds}")
    return float(value)


def _point(xy: Any, what: str) -> list[float]:
    if not isinstance(xy, (list, tuple)) or len(xy) != 2:
        raise ExportError(f"{what}: a point must be [x, y], got {xy!r}")
    return [_number(xy[0], what, high=1.0), _number(xy[1], what, high=1.0)]


def _points(raw: Any, what: str) -> list[list[float]]:
    """A point set's points as fresh ``[x, y]`` float lists in [0, 1] (`_point` on each)."""
    out = []
    for xy in raw or ():
        # the usual case, two floats in range, without a call per coordinate
        if type(xy) is list and len(xy) == 2:
            x, y = xy
            if type(x) is float and type(y) is float and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0:
                out.append([x, y])
                continue
        out.append(_point(xy, what))
    return out


def build_sample(
    rows: ImageRows, usernames: dict[int, str], *, val_fraction: float, with_audio: bool
) -> BuiltSample:
    """One image's rows as an `ExportSample`-shaped dict, checked and serialised deterministically.

    Not validated through the pydantic model (that costs more than building the record): the
    database's types and check constraints already hold for enums, ids and texts, and the few
    rules it cannot enforce (sha256 digests, positive sizes, points in [0, 1], no points on a
    not-present set) are checked here, naming the image. Fields are written in the model's order
    with the model's types, so the JSON is exactly ``ExportSample.model_validate(data).model_dump_json()``
    (tests/test_export_records.py holds the two together).
    """
    image = rows.image
    key = _sha(image["sha256"], f"image {image['id']}")
    where = f"image {key}"
    ext = member_ext(image["mime"])
    ordered_reviews = _in_time_order(rows.reviews)
    verdicts = record_verdicts(ordered_reviews)
    usable = usable_transcripts(rows.transcripts, verdicts)
    recordings, audio = [], []
    for i, r in enumerate(rows.recordings):
        member = None
        if with_audio:
            suffix = f"audio{i}.{audio_ext(r['mime'])}"
            member = f"{key}.{suffix}"
            audio.append(AudioMember(suffix, r["storage_key"], r["sha256"]))
        recordings.append({
            "id": r["id"], "sha256": _sha(r["sha256"], f"{where}: recording {r['id']}"), "mime": r["mime"],
            "duration_s": _number(r["duration_s"], f"{where}: recording {r['id']} duration_s"),
            "annotator": usernames.get(r["user_id"]), "audio_member": member,
        })
    captions = [
        {
            "id": c["id"], "kind": c["kind"], "text": c["text"], "model": c["model"],
            "prompt_version": c["prompt_version"], "produced_by": c["produced_by"],
            "source_transcript_ids": [int(i) for i in c["source_transcript_ids"] or []],
            "faithfulness": _faithfulness(c["faithfulness"]), "flags": flag_names(c["flags"]),
        }
        for c in rows.captions
    ]
    transcripts = []
    for t in rows.transcripts:
        metrics = t["metrics"] or {}
        if not isinstance(metrics, dict):
            raise ExportError(f"{where}: transcript {t['id']} metrics must be an object, got {metrics!r}")
        transcripts.append({
            "id": t["id"], "recording_id": t["recording_id"], "text": t["text"], "language": t["language"],
            "asr_model": t["asr_model"],
            "duration_s": _number(t["duration_s"], f"{where}: transcript {t['id']} duration_s", optional=True),
            "metrics": _sorted_keys(metrics), "flags": flag_names(t["flags"]),
        })
    point_sets = []
    for p in rows.point_sets:
        what = f"{where}: point set {p['id']}"
        points = _points(p["points"], what)
        if p["not_present"] and points:
            raise ExportError(f"{what}: a not_present point set must have no points")
        point_sets.append({
            "id": p["id"], "label": p["label"], "points": points, "not_present": bool(p["not_present"]),
            "method": p["method"], "annotator": usernames.get(p["user_id"]),
        })
    qa = [
        {
            "id": q["id"], "source": q["source"], "question": q["question"], "answer": q["answer"],
            "model": q["model"], "prompt_version": q["prompt_version"], "status": q["status"],
            "caption_id": q["caption_id"],
        }
        for q in rows.qa
    ]
    reviews = [
        {
            "target_type": r["target_type"], "target_id": r["target_id"], "verdict": r["verdict"],
            "reason": r["reason"] or "", "reviewer": usernames.get(r["reviewer_id"]), "created_at": as_utc(r["created_at"]),
        }
        for r in ordered_reviews
    ]
    lineage = {
        "asr_models": sorted({t["asr_model"] for t in rows.transcripts}),
        "llm_models": sorted(
            {c["model"] for c in rows.captions if c["produced_by"] != "human"} | {q["model"] for q in rows.qa if q["model"]}
        ),
        "prompt_versions": sorted(
            {c["prompt_version"] for c in rows.captions} | {q["prompt_version"] for q in rows.qa if q["prompt_version"]}
        ),
    }
    for name in ("width", "height"):
        if isinstance(image[name], bool) or not isinstance(image[name], int) or image[name] <= 0:
            raise ExportError(f"{where}: {name} must be a positive integer, got {image[name]!r}")
    if isinstance(image["bytes"], bool) or not isinstance(image["bytes"], int) or image["bytes"] < 0:
        raise ExportError(f"{where}: bytes must be a non-negative integer, got {image['bytes']!r}")
    data = {
        "key": key,
        "image": {
            "sha256": key, "width": image["width"], "height": image["height"], "mime": image["mime"],
            "bytes": image["bytes"], "source_url": image["source_url"], "source": image["source"], "ext": ext,
        },
        "projects": sorted(set(rows.projects)),
        "captions": captions,
        "transcripts": transcripts,
        "recordings": recordings,
        "point_sets": point_sets,
        "qa": qa,
        "reviews": reviews,
        "review_status": review_status(verdicts),
        "split": split_of(key, val_fraction),
        "lineage": lineage,
        "schema_version": EXPORT_SCHEMA_VERSION,
    }
    caption, caption_id = _best_caption(rows, verdicts, usable)
    return BuiltSample(
        # inf/NaN (which a float column or JSON metrics can hold) as null, as the model writes them
        key=key, data=data, json_bytes=_record_json(data, where), caption=caption, caption_id=caption_id,
        transcripts=[t["text"] for t in newest_per_recording(usable) if t["text"].strip()],
        image_storage_key=image["storage_key"], image_ext=ext, image_mime=image["mime"], audio=audio,
    )


def _record_json(data: dict[str, Any], where: str) -> bytes:
    """A record's JSON bytes, exactly as ``ExportSample.model_dump_json()`` writes them.

    orjson writes the same bytes as pydantic-core for every value tried (compact, keys in
    insertion order, shortest float repr, UTC as ``Z``, inf/NaN as null) about 3 × faster; what
    orjson refuses (an integer beyond 64 bits in free-form metrics) goes to pydantic-core, and what
    neither can write (a lone surrogate) is an ExportError naming ``where``.
    tests/test_export_records.py holds the two together.
    """
    try:
        return orjson.dumps(data, option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError:
        pass
    try:
        return pydantic_core.to_json(data, inf_nan_mode="null")
    except pydantic_core.PydanticSerializationError as exc:
        raise ExportError(f"{where}: the record cannot be written as JSON: {exc}") from exc


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while a batch of samples is built (and written), then restore it.

    Building a shard allocates hundreds of thousands of small containers (row dicts, validated
    `ExportSample` models) that all stay alive until the shard is written. The allocations keep
    setting off generational collections that walk that whole live heap again and again, and find
    nothing to free (the records hold no reference cycles): measured, that made pydantic validation
    and row building 3-4 × slower. Reference counting still frees everything as usual; the few
    cycles made meanwhile (database connections and the like) are collected once the collector is
    back on. Batches are bounded (a shard of ``maxcount`` samples, or a chunk of the HF export).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_samples(
    session: Session,
    image_ids: Sequence[int],
    *,
    val_fraction: float,
    with_audio: bool = False,
    as_of: dt.datetime | None = None,
    usernames: dict[int, str] | None = None,
) -> list[BuiltSample]:
    """Built samples for ``image_ids``, sorted by key."""
    if usernames is None:
        usernames = load_usernames(session)
    with gc_paused():
        rows = load_rows(session, image_ids, as_of)
        built = [build_sample(r, usernames, val_fraction=val_fraction, with_audio=with_audio) for r in rows.values()]
    return sorted(built, key=lambda b: b.key)


ROW_KINDS = ("captions", "transcripts", "recordings", "point_sets", "qa", "reviews")


def count_rows(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """How many captions, transcripts, recordings, point sets, QA pairs and reviews the records hold."""
    counts: dict[str, int] = dict.fromkeys(ROW_KINDS, 0)
    for r in records:
        for kind in ROW_KINDS:
            counts[kind] += len(r[kind])
    return counts
