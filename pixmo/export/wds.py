"""`export_webdataset`: the database as webdataset tar shards plus a manifest, written in parallel.

Steps: select the images (filters) as of a snapshot time → plan the shards from the sorted keys →
clear what a previous run left (the manifest first, then temporary files and shards that are no
longer planned) → write the shards in a process pool, each to a temporary name renamed (or
uploaded) when complete → write ``manifest.json`` last → record an ``exports`` row and the job.
A run that is killed leaves no manifest and no complete-looking partial file; running it again
writes everything anew.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import multiprocessing
import os
import pickle
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from typing import Any

from pixmo.db.session import Database
from pixmo.export.bookkeeping import record_export
from pixmo.export.errors import ExportError
from pixmo.export.manifest import MANIFEST_FORMAT, MANIFEST_NAME, SHARD_NAME_RE, build_manifest, manifest_bytes
from pixmo.export.options import ExportFilters, WebDatasetOptions
from pixmo.progress import Progress
from pixmo.export.records import load_usernames
from pixmo.export.select import select_images, snapshot_time
from pixmo.export.shards import ShardPlan, ShardResult, plan_shards, write_shard
from pixmo.export.target import ExportTarget, check_apart, held_for_export, open_target
from pixmo.jobs import job_run
from pixmo.media import allow_pixels
from pixmo.storage import BlobStore


@dataclass
class ExportResult:
    """What an export wrote: where, its manifest, the job and exports rows, and its speed."""

    out: str
    manifest: dict[str, Any]
    job_id: int
    export_id: int
    elapsed_s: float
    warnings: list[str] = field(default_factory=list)

    @property
    def snapshot_id(self) -> str:
        return self.manifest["snapshot_id"]

    @property
    def samples(self) -> int:
        return self.manifest["counts"]["samples"]

    @property
    def bytes(self) -> int:
        return self.manifest["counts"]["bytes"]

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def stats(self) -> dict[str, Any]:
        c = self.manifest["counts"]
        return {
            "total": c["samples"], "statuses": {"written": c["samples"]}, "reasons": {}, "examples": {},
            "bytes": c["bytes"], "shards": c["shards"], "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.samples_per_s, 2), "mb_per_s": round(self.mb_per_s, 2),
        }


# ----------------------------------------------------------------------------- worker processes

_worker: dict[str, Any] = {}


def _exit_with(parent: int) -> None:
    """End this worker when the export's process is gone (a ``kill -9`` of it leaves nobody to stop the pool)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="pixmo-parent-watch", daemon=True).start()


def _init_worker(
    parent: int, db_url: str, store: BlobStore, target: ExportTarget, options: WebDatasetOptions, as_of: dt.datetime
) -> None:
    _exit_with(parent)
    # forked while the progress bar draws: its stdout/stderr stand-ins write through a console whose
    # lock the drawing thread may have held at the fork (a warning would then hang the worker)
    sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    # a fresh engine and fresh store clients: connections must never be shared with the parent
    # process (forked, an S3 client's pooled keep-alive connections were written to by every worker
    # at once: uploads crossed, failed, or went missing from an export that reported success)
    store, target = pickle.loads(pickle.dumps((store, target)))
    db = Database(db_url)
    with db.session() as session:
        usernames = load_usernames(session)
    _worker.update(db=db, store=store, target=target, options=options,
                   as_of=as_of, usernames=usernames)


def _write_in_worker(plan: ShardPlan) -> ShardResult:
    w = _worker
    return write_shard(plan, db=w["db"], store=w["store"], target=w["target"], options=w["options"],
                       as_of=w["as_of"], usernames=w["usernames"])


def _mp_context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds with everything imported; spawn elsewhere
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return multiprocessing.get_context(method)


# ----------------------------------------------------------------------------- the export


_KEY_MEMBER = re.compile(rb"[0-9a-f]{64}\.")  # a PixMo shard's first member: an image's sha256, then its suffix


def _refuse_foreign_files(target: ExportTarget) -> None:
    """ExportError when the place holds a manifest or shard-named files that no PixMo export wrote: they
    were deleted or overwritten without a word (a folder of one's own train-000000.tar, say). Shards a
    PixMo manifest lists are PixMo's; others are read for the name of their first member."""
    foreign, listed = [], set()
    if target.exists(MANIFEST_NAME):
        try:
            manifest = json.loads(target.get_bytes(MANIFEST_NAME))
            if manifest.get("format") != MANIFEST_FORMAT:
                raise ValueError(manifest.get("format"))
            listed = {s["name"] for s in manifest.get("shards", [])}
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            foreign.append(MANIFEST_NAME)
    for name in target.names():
        if SHARD_NAME_RE.match(name) and name not in listed:
            try:
                with target.open(name) as f:
                    head = f.read(100)  # a tar header begins with the member's name
            except Exception:  # noqa: BLE001 - unreadable: not known to be ours
                head = b""
            if not _KEY_MEMBER.match(head):
                foreign.append(name)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ExportError(f"{target.url} holds {shown}, which no PixMo export wrote: an export there would delete or "
                          "replace them; export to another folder, or move them away")


def _clear_previous(target: ExportTarget, plans: list[ShardPlan]) -> None:
    """Remove the old manifest first (the export is incomplete from now on), then leftovers."""
    _refuse_foreign_files(target)
    target.delete(MANIFEST_NAME)
    target.clear_staging()
    for name in target.temp_names():
        if "/" not in name:  # its own: a subfolder's belong to an HF subset or another export, maybe running
            target.delete(name)
    planned = {p.name for p in plans}
    for name in target.names():
        if SHARD_NAME_RE.match(name) and name not in planned:
            target.delete(name)


def _write_all(
    plans: list[ShardPlan], db: Database, store: BlobStore, target: ExportTarget, options: WebDatasetOptions,
    as_of: dt.datetime, bar: Progress,
) -> list[ShardResult]:
    workers = min(options.workers, len(plans))
    if ":memory:" in db.url:
        workers = 1  # worker processes cannot see a private in-memory database
    if workers <= 1:
        with db.session() as session:
            usernames = load_usernames(session)
        return [
            write_shard(p, db=db, store=store, target=target, options=options, as_of=as_of, usernames=usernames,
                        on_sample=bar.advance)
            for p in plans
        ]
    results: list[ShardResult] = []
    initargs = (os.getpid(), db.url, store, target, options, as_of)
    with ProcessPoolExecutor(workers, mp_context=_mp_context(), initializer=_init_worker, initargs=initargs) as pool:
        pending = {pool.submit(_write_in_worker, p) for p in plans}
        try:
            while pending:
                # each shard as it finishes (the bar moves), and the first failure at once
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    result = fut.result()
                    results.append(result)
                    bar.advance(result.samples)
        except BrokenProcessPool as exc:
            raise ExportError("a worker process ended abruptly (killed, or out of memory?) while writing shards; "
                              "the export has no manifest: run it again") from exc
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    return results


def export_webdataset(
    db: Database,
    store: BlobStore,
    out: str | ExportTarget | BlobStore,
    filters: ExportFilters | None = None,
    options: WebDatasetOptions | None = None,
    *,
    progress: bool | Callable[[int], None] = False,
) -> ExportResult:
    """Export one sample per selected image to webdataset shards at ``out`` (folder or ``s3://``).

    Samples are ``{key}.{jpg|png|webp}`` (original bytes unless ``max_side`` resizes),
    ``{key}.json`` (an `ExportSample`), ``{key}.txt`` (the best caption) and, with ``with_audio``,
    ``{key}.audio<i>.<ext>`` per recording. ``progress`` is True for a bar on stderr, or a
    callable that receives the number of samples written as they are written.
    """
    allow_pixels()  # before the workers fork: they decode what --max-side resizes
    filters = filters or ExportFilters()
    options = options or WebDatasetOptions()
    target = open_target(out)
    check_apart(target, store)
    started = time.perf_counter()
    params = {"out": target.url, "filters": filters.as_dict(), "options": asdict(options)}
    with job_run(db, "export", params) as job, held_for_export(db, target) as hold:
        as_of, warnings = snapshot_time(db, filters)
        with db.session() as session:
            candidates = select_images(session, filters, as_of=as_of, with_audio=options.with_audio)
        plans = plan_shards(candidates, maxcount=options.maxcount, maxsize=options.maxsize,
                            val_fraction=options.val_fraction)
        hold.check()
        _clear_previous(target, plans)
        with Progress("export", len(candidates), progress) as bar:
            results = _write_all(plans, db, store, target, options, as_of, bar)
        manifest = build_manifest(filters, options, results)
        manifest_data = manifest_bytes(manifest)
        hold.check()
        target.put_bytes(MANIFEST_NAME, manifest_data)
        elapsed = time.perf_counter() - started
        export_id = record_export(
            db, snapshot_id=manifest["snapshot_id"], fmt="webdataset", output_url=target.url,
            filters=manifest["filters"], counts=manifest["counts"],
            versions={**manifest["versions"], "code_version": manifest["code_version"],
                      "schema_version": manifest["schema_version"]},
            shards=manifest["shards"], manifest_sha256=hashlib.sha256(manifest_data).hexdigest(),
            job_id=job.id,
        )
        result = ExportResult(target.url, manifest, job.id, export_id, elapsed, warnings)
        job.stats = {**result.stats(), "snapshot_id": result.snapshot_id}
    return result
