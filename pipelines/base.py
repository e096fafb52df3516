"""The stage skeleton: the base owns the loop, batching, timing, progress, stats and the job row.

A concrete stage says what its items are (``items``), how one batch is processed
(``process_batch``, off the writer thread) and how results are written (``write``, one
transaction per batch). A failed sample is data (a status and a reason); a failed stage is loud
(the job row is marked failed and the exception propagates).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, is_dataclass
from itertools import islice
from typing import Any, Generic, TypeVar

from sqlalchemy.orm import Session

from pixmo.db.session import Database
from pixmo.errors import PixmoError, ValidationError
from pixmo.jobs import job_run
from pixmo.progress import Progress
from pixmo.richtext import plain


class StageBusy(PixmoError):
    """Another run of the same stage holds it on this database."""


class StageLockLost(PixmoError):
    """The stage's lock went away under a run (PostgreSQL frees it with a cut connection): another
    run may have taken it, so this one stops before it writes again."""


Item = TypeVar("Item")
Result = TypeVar("Result")


@dataclass
class StageStats:
    """Counts by status, failures by reason, sizes and timing of one run."""

    statuses: Counter = field(default_factory=Counter)
    status_reasons: Counter = field(default_factory=Counter)  # (status, reason) -> count
    examples: dict[str, str] = field(default_factory=dict)
    bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    elapsed_s: float = 0.0

    def record(self, status: str, reason: str | None = None, ref: str | None = None, nbytes: int = 0) -> None:
        self.statuses[status] += 1
        self.bytes += nbytes
        if reason:
            self.status_reasons[status, reason] += 1
            if ref is not None:
                self.examples.setdefault(reason, ref)

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def reasons(self) -> Counter:
        """Count per reason, whichever status it led to."""
        out: Counter = Counter()
        for (_, reason), n in self.status_reasons.items():
            out[reason] += n
        return out

    def finish(self) -> None:
        self.elapsed_s = time.perf_counter() - self.started

    def as_dict(self) -> dict[str, Any]:
        elapsed = self.elapsed_s or (time.perf_counter() - self.started)
        by_status: dict[str, dict[str, int]] = {}
        for (status, reason), n in sorted(self.status_reasons.items()):
            by_status.setdefault(status, {})[reason] = n
        return {
            "total": self.total,
            "statuses": dict(self.statuses),
            "reasons": dict(self.reasons),
            "reasons_by_status": by_status,
            "examples": dict(self.examples),
            "bytes": self.bytes,
            "elapsed_s": round(elapsed, 3),
            "items_per_s": round(self.total / elapsed, 2) if elapsed > 0 else None,
        }


def batched(iterable: Iterable[Item], size: int) -> Iterator[list[Item]]:
    it = iter(iterable)
    while batch := list(islice(it, size)):
        yield batch


def _jsonable(params: Any) -> dict[str, Any]:
    raw = asdict(params) if is_dataclass(params) else dict(params or {})
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None), list, dict)) else v) for k, v in raw.items()}


class Stage(Generic[Item, Result]):
    """Base class of every batch stage. Subclasses set ``kind`` and implement the hooks."""

    kind = "stage"
    batch_size = 64
    workers = 2
    # one run at a time: two would both do every pending item (model time; the rows stay single)
    exclusive = False

    def __init__(self, db: Database, params: Any = None):
        limit = getattr(params, "limit", None)
        if limit is not None and limit < 0:  # SQLite reads LIMIT -1 as no limit, a negative slice drops the end
            raise ValidationError("limit must be 0 or more")
        self.db = db
        self.params = params
        self.stats = StageStats()
        self.job_id: int | None = None
        self._lock = None  # the exclusive stage's NamedLock while it runs

    # -- hooks ---------------------------------------------------------------------------
    def items(self) -> Iterable[Item]:
        raise NotImplementedError

    def total(self) -> int | None:
        """How many items there will be, when known cheaply (for the progress bar)."""
        return None

    def process_batch(self, batch: Sequence[Item]) -> list[Result]:
        raise NotImplementedError

    def write(self, session: Session, results: list[Result]) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """What a run does first, under the stage's lock (an exclusive stage's): deleting the rows
        ``retry_failed`` asks to try again, say. Done before that, it would touch rows a run holding
        the lock is working on."""

    def progress_advance(self, results: list[Result]) -> float:
        """How far one written batch moves the progress bar (default: one per result)."""
        return len(results)

    # -- the loop ------------------------------------------------------------------------
    def run(self, *, progress: bool = True, pipeline_depth: int = 2) -> dict[str, Any]:
        """Process every item; returns the stats dict (also stored on the job row).

        An ``exclusive`` stage runs once at a time per database (per ``kind``): StageBusy while
        another run holds it (a `pixmo worker`, say), before the job row or the batches (a stage
        may have planned its items and set up its backend when it was made).
        """
        if not self.exclusive:
            self.prepare()
            return self.execute(progress=progress, pipeline_depth=pipeline_depth)
        with self.db.try_lock(f"stage:{self.kind}") as held:
            if not held:
                raise StageBusy(f"another {self.kind} run is working on this database now (a `pixmo worker`?); "
                                "try again when it has finished")
            self._lock = held
            try:
                self.prepare()
                return self.execute(progress=progress, pipeline_depth=pipeline_depth)
            finally:
                self._lock = None

    def execute(self, *, progress: bool, pipeline_depth: int) -> dict[str, Any]:
        """The run itself, under the stage's lock: the job row, the batches, the stats."""
        # process batches ahead of the writer so I/O, decoding and DB writes overlap
        feeder = ThreadPoolExecutor(max_workers=1)
        pending: list[Future] = []

        def write_oldest(bar: Progress) -> None:
            # off the list only once it has ended: a stop while waiting for it must still see it
            # under way (below)
            results = pending[0].result()
            pending.pop(0)
            self._write(results, bar)

        try:
            with job_run(self.db, self.kind, _jsonable(self.params)) as job, \
                    Progress(self.kind, self.total(), progress) as bar:
                self.job_id = job.id
                try:
                    for batch in batched(self.items(), self.batch_size):
                        pending.append(feeder.submit(self.process_batch, batch))
                        if len(pending) >= pipeline_depth:
                            write_oldest(bar)
                    while pending:
                        write_oldest(bar)
                finally:
                    # on a failure or a stop (SIGTERM), batches not started are dropped and the job
                    # row is marked at once, not after the batch processed ahead (a container's stop
                    # grace period may not last that long)
                    feeder.shutdown(wait=False, cancel_futures=True)
                    self.stats.finish()
                    self.complete_stats()
                    job.stats = self.stats.as_dict()  # kept on the row whether the run ends or fails
        finally:
            # a batch already running finishes (unwritten) before the stage's lock is let go:
            # another run taking the lock meanwhile would process its items again
            if any(f.running() for f in pending):
                print(f"{self.kind}: stopping; the batch under way finishes first (its results are not written)",
                      file=sys.stderr, flush=True)
            feeder.shutdown(wait=True)
        return self.stats.as_dict()

    def complete_stats(self) -> None:
        """Add what the stats lack before they are stored, whether the run ended or failed."""

    def _write(self, results: list[Result], bar: Progress) -> None:
        # the write lock up front: a batch reads, then writes, and on SQLite a concurrent run's
        # commit in between would fail it ("database is locked") instead of making it wait
        if self._lock is not None and not self._lock.still_held():
            raise StageLockLost(f"the {self.kind} stage's lock was lost (the database connection that held it was "
                                "cut): stopping, as another run may have taken it over; the next run goes on")
        with self.db.session(write_lock=True) as session:
            self.write(session, results)
        bar.advance(self.progress_advance(results))


def stats_table(title: str, stats: dict[str, Any]):  # noqa: ANN201
    """A rich Table summarising a run: each status, with the reasons that led to it and an example each."""
    from rich.table import Table

    table = Table(title=plain(title))
    table.add_column("status / reason")
    table.add_column("count", justify="right")
    table.add_column("example")
    for status, n in sorted(stats["statuses"].items()):
        table.add_row(f"[bold]{status}", str(n), "")
        for reason, m in stats["reasons_by_status"].get(status, {}).items():  # under the status it led to
            table.add_row(f"  {plain(reason)}", str(m), plain(stats["examples"].get(reason, "")))
    table.caption = f"{stats['total']} items in {stats['elapsed_s']:.1f} s ({stats['items_per_s'] or 0:.1f}/s)"
    return table
