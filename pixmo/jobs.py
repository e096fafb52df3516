"""The ``jobs`` rows of pipeline runs and exports: started, finished, or found interrupted.

A run records the host (its hostname) and process that runs it. A run killed outright (SIGKILL,
out of memory, power loss) never marks its row; the next job started on the same host, or
`reap_stale_jobs`, marks such rows ``failed`` ("interrupted") once their process is gone (a row
with this process's own id that this process did not start counts as gone: a container restarted
in place keeps its hostname and may get the same pid again). Rows of
other hosts are left alone, since their processes cannot be seen from here: a run killed in a
container that is never started again keeps saying ``running``. Containers that share one
hostname must share the process namespace too (the usual case is one hostname per container).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from pixmo.db.models import Job, utcnow
from pixmo.db.session import Database


def this_host() -> str:
    """The name runs on this machine record in ``jobs.host``."""
    return socket.gethostname()[:255]


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a process of another user counts).

    A thread's id is no process: ``kill(tid, 0)`` succeeds for it on Linux, so a job whose pid is
    now a thread of another process (a container restarted in place, its new process's threads
    numbered from the same low ids) would stay ``running`` for good.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists; it is another user's
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1]) == pid  # a thread's thread group is its process
    except (OSError, ValueError):
        pass  # no /proc (macOS) or it ended meanwhile: kill's answer stands
    return True


_started_here: set[tuple[str, int]] = set()  # (database URL, job id) of the jobs this process started


def reap_stale_jobs(db: Database) -> list[int]:
    """Mark ``failed`` the running jobs of this host whose process is gone; returns their ids."""
    host = this_host()
    reaped = []
    # SQLite's write lock up front (a read-then-write); the status condition keeps a job that
    # finished meanwhile from being overwritten on PostgreSQL
    with db.session(write_lock=True) as session:
        running = session.execute(
            select(Job.id, Job.pid).where(Job.status == "running", Job.host == host, Job.pid.is_not(None))
        ).all()
        for job_id, pid in running:
            if pid == os.getpid():
                if (db.url, job_id) in _started_here:
                    continue
                # our pid but not our job: an earlier process with the same pid, as a container
                # restarted in place has (same hostname, a fresh pid namespace counting the same)
            elif process_alive(pid):
                continue
            done = session.execute(
                update(Job).where(Job.id == job_id, Job.status == "running").values(
                    status="failed", finished_at=utcnow(),
                    error=f"interrupted: process {pid} on {host} ended without finishing the job",
                )
            )
            if done.rowcount:
                reaped.append(job_id)
    return reaped


def start_job(db: Database, kind: str, params: dict[str, Any]) -> int:
    """Insert a running ``jobs`` row owned by this process (reaping this host's stale ones first)."""
    reap_stale_jobs(db)
    with db.session(write_lock=True) as session:
        job = Job(kind=kind, params=params, host=this_host(), pid=os.getpid())
        session.add(job)
        session.flush()
        job_id = job.id
        _started_here.add((db.url, job_id))  # before the commit: another thread's reaper must not see it as stale
    return job_id


FINISH_TRIES = 4


def finish_job(
    db: Database, job_id: int, status: str, stats: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """Mark the job ``succeeded`` or ``failed``, with its stats or error; a lost connection (a
    database blip) is tried again a few times, as the row would otherwise stay ``running`` with its
    stats lost until this process's next job reaps it."""
    from sqlalchemy.exc import OperationalError

    try:
        for attempt in range(FINISH_TRIES):
            try:
                with db.session(write_lock=True) as session:  # read then write: wait for other writers (SQLite)
                    job = session.get(Job, job_id)
                    job.status = status
                    job.error = error
                    job.stats = stats or {}
                    job.finished_at = utcnow()
                return
            except OperationalError:
                if attempt == FINISH_TRIES - 1:
                    raise
                time.sleep(0.5 * 2**attempt)
    finally:
        # no longer ours to keep alive: a row left 'running' by a failed update (a database blip)
        # is reaped as interrupted by this process's next job, not skipped for as long as it lives
        _started_here.discard((db.url, job_id))


@dataclass
class JobRun:
    """The running job of a `job_run` block: its row id, and the stats its row will keep."""

    id: int
    stats: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def job_run(db: Database, kind: str, params: dict[str, Any]) -> Iterator[JobRun]:
    """A ``jobs`` row for the block: ``succeeded`` with ``run.stats`` when it ends, ``failed``
    with the exception (and whatever ``run.stats`` holds then) when it raises, even on Ctrl-C."""
    run = JobRun(start_job(db, kind, params))
    try:
        yield run
    except BaseException as exc:
        finish_job(db, run.id, "failed", run.stats, error=f"{type(exc).__name__}: {exc}")
        raise
    finish_job(db, run.id, "succeeded", run.stats)
