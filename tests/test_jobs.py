"""Job rows: runs record their host and process; rows of runs killed outright are marked interrupted."""

from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import select

from pixmo.db.models import Job
from pixmo.jobs import finish_job, process_alive, reap_stale_jobs, start_job, this_host


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _job(db, **kw) -> int:
    with db.session() as s:
        job = Job(kind="test", params={}, **kw)
        s.add(job)
        s.flush()
        return job.id


def _status(db, job_id):
    with db.session() as s:
        job = s.get(Job, job_id)
        return job.status, job.error, job.finished_at


def test_start_and_finish_record_the_owner(db):
    job_id = start_job(db, "test", {"n": 1})
    with db.session() as s:
        job = s.get(Job, job_id)
        assert (job.status, job.host, job.pid, job.params) == ("running", this_host(), os.getpid(), {"n": 1})
    finish_job(db, job_id, "succeeded", {"total": 3})
    status, error, finished = _status(db, job_id)
    assert status == "succeeded" and error is None and finished is not None


def test_only_this_hosts_jobs_whose_process_is_gone_are_reaped(db):
    dead = _dead_pid()
    assert not process_alive(dead) and process_alive(os.getpid())
    killed = _job(db, host=this_host(), pid=dead)
    alive = _job(db, host=this_host(), pid=os.getpid())
    elsewhere = _job(db, host="another-machine", pid=dead)
    unknown_owner = _job(db)  # rows written before jobs recorded their owner
    finished = _job(db, host=this_host(), pid=dead, status="succeeded")

    assert reap_stale_jobs(db) == [killed]
    status, error, when = _status(db, killed)
    assert status == "failed" and error.startswith(f"interrupted: process {dead} on {this_host()}") and when
    for job_id, expected in [(alive, "running"), (elsewhere, "running"), (unknown_owner, "running"), (finished, "succeeded")]:
        assert _status(db, job_id)[0] == expected
    assert reap_stale_jobs(db) == []


def test_starting_a_job_reaps_the_stale_ones(db):
    killed = _job(db, host=this_host(), pid=_dead_pid())
    start_job(db, "test", {})
    assert _status(db, killed)[0] == "failed"
    with db.session() as s:
        assert s.scalars(select(Job.status).where(Job.kind == "test").order_by(Job.id)).all() == ["failed", "running"]


def test_job_run_marks_the_row_by_how_the_block_ends(db):
    import pytest

    from pixmo.jobs import job_run

    with job_run(db, "test", {"n": 2}) as job:
        job.stats = {"total": 5}
    with db.session() as s:
        row = s.get(Job, job.id)
        assert (row.status, row.stats, row.error, row.params) == ("succeeded", {"total": 5}, None, {"n": 2})

    for exc in (ValueError("bad row 7"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), job_run(db, "test", {}) as job:
            job.stats = {"total": 1}  # what was done before the failure is kept
            raise exc
        with db.session() as s:
            row = s.get(Job, job.id)
            assert row.status == "failed" and row.stats == {"total": 1} and row.finished_at is not None
            assert row.error == f"{type(exc).__name__}: {exc}"
