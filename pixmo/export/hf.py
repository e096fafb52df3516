"""`export_hf`: parquet files in the released PixMo Hugging Face schemas (`schemas.pixmo_hf`).

One subset per call; files ``<OUT>/<subset>/train-00000.parquet``, ... (at most ``rows_per_file``
rows each), every one with exactly the columns and Arrow types of `schemas.pixmo_hf.arrow_schema`.
Rows come from the same records as the webdataset export, so the same filters and rules apply;
rows rejected or flagged by a reviewer are left out, and only accepted QA pairs are written.

- ``cap``: the best caption and the usable transcripts of each image that has a usable caption
  (an image with transcripts only gives no row: a transcript is not a caption).
- ``points``: every point set (pointing and counting), points on PixMo's 0-100 scale.
- ``ama`` / ``capqa`` / ``point_explanations``: accepted QA of that source; point explanations
  cite points inline as Molmo point text, which is split into placeholders and point lists.
- ``count``: counting point sets, points in pixels (as allenai/pixmo-count stores them).

``image_url`` is the image's source URL, or else a signed URL of its blob (valid ``url_expires``
seconds; S3 allows at most 7 days).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from pixmo.db.models import PointSet, Project, QAPair
from pixmo.db.session import Database
from pixmo.errors import StorageError, ValidationError
from pixmo.export.bookkeeping import record_export
from pixmo.export.errors import ExportError
from pixmo.export.options import ExportFilters
from pixmo.progress import Progress
from pixmo.export.records import BuiltSample, build_samples, load_usernames
from pixmo.export.select import select_images, snapshot_time
from pixmo.export.target import ExportTarget, HashingWriter, check_apart, held_for_export, open_target, write_errors
from pixmo.formats.points import parse_points, to_pixels, to_pixmo100
from pixmo.jobs import job_run
from pixmo.storage import BlobStore, S3Store
from pixmo.verdicts import is_usable, record_verdicts, unusable_captions, usable_qa
from schemas.pixmo_hf import ROW_MODELS, rows_to_table

HF_SUBSETS = tuple(ROW_MODELS)
POINT_PLACEHOLDER = "<|POINT|>"
_POINT_ELEMENT_RE = re.compile(r"<(points?)\b[^>]*?(?:/>|>.*?</\1\s*>)", re.DOTALL)
BUILD_CHUNK = 500
WEEK = 7 * 24 * 3600


@dataclass
class HFExportResult:
    """Where the parquet files went, how many rows each holds, and the job/exports rows."""

    out: str
    subset: str
    files: list[dict[str, Any]]
    rows: int
    snapshot_id: str
    job_id: int
    export_id: int
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        return {
            "total": self.rows, "statuses": {"written": self.rows}, "reasons": {}, "examples": {},
            "files": len(self.files), "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.rows / self.elapsed_s, 2) if self.elapsed_s > 0 else None,
        }


def _pixmo100(points: Any) -> list[tuple[float, float]]:
    # round away float noise (0.4321 * 100 = 43.209999999999994) without losing real precision
    return [(round(p.x, 6), round(p.y, 6)) for p in to_pixmo100(points)]


def split_point_explanation(answer: str) -> dict[str, Any]:
    """An answer citing Molmo point elements -> parsed_response with placeholders, alt_text,
    inline_text and points (0-100) per element; parsed_response is None when an element is malformed."""
    alt_text, inline_text, points = [], [], []
    malformed = False

    def replace(m: re.Match[str]) -> str:
        nonlocal malformed
        refs = parse_points(m.group(0), strict=False)
        if not refs:
            malformed = True
            return m.group(0)
        ref = refs[0]
        alt_text.append(ref.alt)
        inline_text.append(ref.label)
        points.append([list(p) for p in _pixmo100(ref.points)])
        return POINT_PLACEHOLDER

    parsed = _POINT_ELEMENT_RE.sub(replace, answer)
    return {"parsed_response": None if malformed else parsed, "alt_text": alt_text, "inline_text": inline_text,
            "points": points}


def hf_rows(subset: str, sample: BuiltSample, image_url: str, only: dict[str, set[int]] | None = None) -> list[dict[str, Any]]:
    """The rows of one PixMo subset that one sample gives; with ``only`` (``{"point_set": ids,
    "qa_pair": ids}``), only those point sets and QA pairs (the ones of the projects asked for)."""
    rec = sample.data
    verdicts = record_verdicts(rec["reviews"])  # reviews are in time order

    def ok(kind: str, row_id: int) -> bool:
        return is_usable(verdicts, kind, row_id) and (only is None or kind not in only or row_id in only[kind])

    if subset == "cap":
        if sample.caption_id is None:  # a raw transcript is no caption (it is in `transcripts`)
            return []
        return [{"image_url": image_url, "caption": sample.caption, "transcripts": list(sample.transcripts)}]
    if subset == "points":
        return [
            {"image_url": image_url, "image_sha256": rec["key"],
             "points": [{"x": x, "y": y} for x, y in _pixmo100(ps["points"])], "count": len(ps["points"]),
             "label": ps["label"], "collection_method": ps["method"]}
            for ps in rec["point_sets"] if ok("point_set", ps["id"])
        ]
    if subset == "count":
        rows = []
        for ps in rec["point_sets"]:
            if ps["method"] != "counting" or not ok("point_set", ps["id"]):
                continue
            px = to_pixels(ps["points"], rec["image"]["width"], rec["image"]["height"])
            rows.append({"image_url": image_url, "image_sha256": rec["key"], "count": len(px),
                         "points": {"x": [p.x for p in px], "y": [p.y for p in px]}, "label": ps["label"]})
        return rows
    source = {"ama": "ask", "capqa": "capqa", "point_explanations": "point_explain"}[subset]
    rows = []
    for qa in usable_qa(rec["qa"], verdicts, unusable_captions(rec["captions"], rec["transcripts"], verdicts)):
        if qa["source"] != source or not ok("qa_pair", qa["id"]):
            continue
        if subset == "ama":
            rows.append({"image_url": image_url, "image_sha256": rec["key"], "question": qa["question"], "answer": qa["answer"]})
        elif subset == "capqa":
            rows.append({"image_url": image_url, "question": qa["question"], "answer": qa["answer"],
                         "messages": [qa["question"], qa["answer"]]})
        else:
            rows.append({"image_url": image_url, "image_sha256": rec["key"], "question": qa["question"],
                         "response": qa["answer"], **split_point_explanation(qa["answer"])})
    return rows


class _RollingParquet:
    """Writes tables into ``<subset>/train-NNNNN.parquet`` files of at most ``rows_per_file`` rows.

    Files are staged (temporary files on this machine) and published only by `finish`, once all are
    complete: a run that fails while building them leaves the previous export's files as they were.
    """

    def __init__(self, target: ExportTarget, subset: str, rows_per_file: int) -> None:
        from schemas.pixmo_hf import arrow_schema

        self.target, self.subset, self.rows_per_file = target, subset, rows_per_file
        self.schema = arrow_schema(subset)
        self.files: list[dict[str, Any]] = []
        self._staged: list[tuple[str, str]] = []  # (temporary path, name), complete, not yet published
        self._file = None
        self._path = ""
        self._writer = None
        self._out: HashingWriter | None = None
        self._rows = 0
        self._name = ""

    def _open(self) -> None:
        import pyarrow.parquet as pq

        name = f"{self.subset}/train-{len(self.files):05d}.parquet"
        f, path = self.target.stage(name)
        try:
            out = HashingWriter(f, name, self.target.url)
            writer = pq.ParquetWriter(out, self.schema)
        except BaseException:
            _discard(f, path)
            raise
        self._name, self._file, self._path, self._out, self._writer, self._rows = name, f, path, out, writer, 0

    def _close(self, ok: bool = True) -> None:
        if self._file is None:
            return
        f, self._file = self._file, None
        try:
            self._writer.close()
            with write_errors(self._name, self.target.url):
                f.close()
        except BaseException:
            _discard(f, self._path)
            raise
        if not ok:
            _discard(f, self._path)
            return
        self._staged.append((self._path, self._name))
        self.files.append({"name": self._name, "rows": self._rows, "sha256": self._out.hash.hexdigest(),
                           "bytes": self._out.size})

    def write(self, rows: list[dict[str, Any]]) -> None:
        while rows:
            if self._file is None:
                self._open()
            room = self.rows_per_file - self._rows
            chunk, rows = rows[:room], rows[room:]
            self._writer.write_table(rows_to_table(self.subset, chunk))
            self._rows += len(chunk)
            if self._rows >= self.rows_per_file:
                self._close()

    def finish(self) -> None:
        """Close the last file and publish every file, in order."""
        if self._file is None and not self.files:
            self._open()  # an empty subset still gets one file with the right schema
        self._close()
        published = 0
        try:
            for path, name in self._staged:
                self.target.publish(path, name)
                published += 1
        except StorageError as exc:
            if published:
                exc.add_note(f"the first {published} file(s) of {self.subset}/ are this export's, the others the "
                             "previous one's: run the export again")
            raise
        finally:
            self._staged = self._staged[published:]

    def abort(self) -> None:
        """Drop the file being written and every staged file not yet published."""
        self._close(ok=False)
        for path, _ in self._staged:
            Path(path).unlink(missing_ok=True)
        self._staged = []


def _discard(f, path: str) -> None:  # noqa: ANN001 - a binary file
    with contextlib.suppress(OSError):
        f.close()
    Path(path).unlink(missing_ok=True)


def _image_urls(store: BlobStore, samples: list[BuiltSample], expires: int, signed: list[int]) -> dict[str, str]:
    """Each sample's image URL: its source URL, or a signed one of its blob (counted in ``signed[0]``)."""
    urls = {}
    for s in samples:
        if s.data["image"]["source_url"]:
            urls[s.key] = s.data["image"]["source_url"]
            continue
        signed[0] += 1
        try:
            urls[s.key] = store.url(s.image_storage_key, expires=expires)
        except StorageError as exc:
            raise ExportError(f"image {s.key} has no source URL and its blob URL cannot be made: {exc}") from exc
    return urls


def export_hf(
    db: Database,
    store: BlobStore,
    out: str | ExportTarget | BlobStore,
    subset: str,
    filters: ExportFilters | None = None,
    *,
    rows_per_file: int = 100_000,
    url_expires: int = WEEK,
    progress: bool | Callable[[int], None] = False,
) -> HFExportResult:
    """Write one PixMo subset as parquet under ``out/<subset>/``; see the module doc for the rows."""
    if subset not in HF_SUBSETS:
        raise ValidationError(f"unknown subset {subset!r}; use one of {', '.join(HF_SUBSETS)}")
    if rows_per_file < 1:
        raise ValidationError("rows_per_file must be at least 1")
    filters = filters or ExportFilters()
    target = open_target(out)
    check_apart(target, store)
    started = time.perf_counter()
    params = {"out": target.url, "subset": subset, "filters": filters.as_dict(), "rows_per_file": rows_per_file}
    with job_run(db, f"export-hf-{subset}", params) as job, held_for_export(db, target, subset) as hold:
        for name in target.temp_names():  # what a killed run of this subset left
            if name.startswith(f"{subset}/"):
                target.delete(name)
        target.clear_staging(subset)
        writer = _RollingParquet(target, subset, rows_per_file)
        try:
            as_of, warnings = snapshot_time(db, filters)
            with db.session() as session:
                candidates = select_images(session, filters, as_of=as_of)
                usernames = load_usernames(session)
            total, signed = 0, [0]
            with Progress(f"export {subset}", len(candidates), progress) as bar:
                for chunk in _chunked([c.image_id for c in candidates], BUILD_CHUNK):
                    with db.session() as session:
                        samples = build_samples(session, chunk, val_fraction=0.0, as_of=as_of, usernames=usernames)
                        only = _items_of_projects(session, chunk, filters.projects)
                    urls = _image_urls(store, samples, url_expires, signed)
                    rows = [row for s in samples for row in hf_rows(subset, s, urls[s.key], only)]
                    writer.write(rows)
                    total += len(rows)
                    bar.advance(len(chunk))
            if signed[0] and total:
                warnings.append(_signed_url_warning(store, signed[0], url_expires))
            hold.check()
            writer.finish()
            # only now that the new files are complete: drop what an earlier, larger export left
            keep = {f["name"] for f in writer.files}
            for name in target.names():
                if name.startswith(f"{subset}/train-") and name.endswith(".parquet") and name not in keep:
                    target.delete(name)
            content = {"subset": subset, "filters": filters.as_dict(), "files": writer.files}
            snapshot = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
            elapsed = time.perf_counter() - started
            export_id = record_export(
                db, snapshot_id=snapshot, fmt=f"hf-{subset}", output_url=target.url, filters=filters.as_dict(),
                counts={"rows": total, "images": len(candidates), "files": len(writer.files)},
                versions={"hf_repo": ROW_MODELS[subset].hf_repo}, shards=writer.files, manifest_sha256=None, job_id=job.id,
            )
            result = HFExportResult(target.url, subset, writer.files, total, snapshot, job.id, export_id, elapsed,
                                    warnings)
        except BaseException:
            writer.abort()
            raise
        job.stats = result.stats()
    return result


def _items_of_projects(session: Session, image_ids: list[int], projects: tuple[str, ...] | list[str]) -> dict[str, set[int]] | None:
    """Ids of the point sets and QA pairs of ``image_ids`` made in ``projects`` (None: no project
    asked for). A row per item: `--subset points --project captions-only` wrote another project's
    point sets on the same images."""
    if not projects:
        return None
    in_projects = select(Project.id).where(Project.name.in_(list(projects)))
    return {
        kind: set(session.scalars(select(model.id).where(model.image_id.in_(image_ids), model.project_id.in_(in_projects))))
        for kind, model in (("point_set", PointSet), ("qa_pair", QAPair))
    }


def _signed_url_warning(store: BlobStore, n: int, expires: int) -> str:
    """What a reader of the files should know of image URLs this installation signed: they expire,
    and a loopback address (the default PIXMO_PUBLIC_URL) reaches nobody else's machine."""
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(time.time() + expires))
    text = f"{n} image(s) have no source URL: their image_url is a signed link to this installation's store, valid until {until}"
    if isinstance(store, S3Store):  # the host the links are signed for (none: AWS itself)
        base, setting = store.public_endpoint_url or store.endpoint_url or "", "PIXMO_S3_PUBLIC_ENDPOINT_URL"
    else:
        base, setting = getattr(store, "public_url", ""), "PIXMO_PUBLIC_URL"
    host = urlsplit(base).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127.") or (host and "." not in host):
        # loopback, or a name only a private network knows (compose's minio)
        text += f", at {base}, which other machines do not reach: set {setting} to an address they can"
    return text


def _chunked(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
