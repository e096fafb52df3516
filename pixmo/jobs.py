"""The ``jobs`` rows of pipeline runs and exports: started, finished, or found interrupted.

A run records the host and process that runs it. A run killed outright (SIGKILL, out of memory,
power loss) never marks its row; the next job started on the same host, or `reap_stale_jobs`,
marks such rows ``failed`` ("interrupted") once their process is gone, so no row says
``running`` forever. Rows of other hosts are left alone: their processes cannot be seen from here.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from sqlalchemy import select

from pixmo.db.models import Job, utcnow
from pixmo.db.session import Database


def this_host() -> str:
    """The name runs on this machine record in ``jobs.host``."""
    return socket.gethostname()[:255]


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine (a process of another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_jobs(db: Database) -> list[int]:
    """Mark ``failed`` the running jobs of this host whose process is gone; returns their ids."""
    host = this_host()
    reaped = []
    with db.session() as session:
        running = session.scalars(
            select(Job).where(Job.status == "running", Job.host == host, Job.pid.is_not(None))
        ).all()
        for job in running:
            if job.pid == os.getpid() or process_alive(job.pid):
                continue
            job.status = "failed"
            job.error = f"interrupted: process {job.pid} on {host} ended without finishing the job"
            job.finished_at = utcnow()
            reaped.append(job.id)
    return reaped


def start_job(db: Database, kind: str, params: dict[str, Any]) -> int:
    """Insert a running ``jobs`` row owned by this process (reaping this host's stale ones first)."""
    reap_stale_jobs(db)
    with db.session() as session:
        job = Job(kind=kind, params=params, host=this_host(), pid=os.getpid())
        session.add(job)
        session.flush()
        return job.id


def finish_job(
    db: Database, job_id: int, status: str, stats: dict[str, Any] | None = None, error: str | None = None
) -> None:
    """Mark the job ``succeeded`` or ``failed``, with its stats or error."""
    with db.session() as session:
        job = session.get(Job, job_id)
        job.status = status
        job.error = error
        job.stats = stats or {}
        job.finished_at = utcnow()
