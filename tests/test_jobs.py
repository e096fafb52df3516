"""Job rows: runs record their host and process; rows of runs killed outright are marked interrupted."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
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
    mine = start_job(db, "test", {})
    killed = _job(db, host=this_host(), pid=dead)
    alive = _job(db, host=this_host(), pid=os.getppid())
    # a row with this process's pid that it did not start: a container restarted in place (same
    # hostname, same pid again) left it
    earlier_incarnation = _job(db, host=this_host(), pid=os.getpid())
    elsewhere = _job(db, host="another-machine", pid=dead)
    unknown_owner = _job(db)  # rows written before jobs recorded their owner
    finished = _job(db, host=this_host(), pid=dead, status="succeeded")

    assert reap_stale_jobs(db) == [killed, earlier_incarnation]
    status, error, when = _status(db, killed)
    assert status == "failed" and error.startswith(f"interrupted: process {dead} on {this_host()}") and when
    for job_id, expected in [(alive, "running"), (mine, "running"), (elsewhere, "running"),
                             (unknown_owner, "running"), (finished, "succeeded")]:
        assert _status(db, job_id)[0] == expected
    assert reap_stale_jobs(db) == []


def test_a_pid_that_is_now_a_thread_of_another_process_is_no_live_job():
    """kill(tid, 0) succeeds for a thread id: a job row whose old pid was now one of the threads of
    a new process (a container restarted in place) stayed running for good."""
    import threading

    got, done = [], threading.Event()

    def note() -> None:
        got.append(threading.get_native_id())
        done.wait(5)

    thread = threading.Thread(target=note)
    thread.start()
    try:
        while not got:
            time.sleep(0.01)
        assert got[0] != os.getpid() and not process_alive(got[0])
    finally:
        done.set()
        thread.join()
    assert process_alive(os.getpid())


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


def test_the_same_snapshot_recorded_at_once_by_several_exports_is_one_row(db):
    """Two identical exports that finish together both record their snapshot (a look-up then an
    insert let the second fail on the unique snapshot id)."""
    import threading

    from pixmo.db.models import Export
    from pixmo.export.bookkeeping import record_export

    def record(i: int) -> int:
        return record_export(db, snapshot_id="snap-race", fmt="webdataset", output_url=f"/out{i}", filters={},
                             counts={"samples": i}, versions={}, shards=[], manifest_sha256=None, job_id=None)

    for _ in range(5):
        barrier, ids, errors = threading.Barrier(4), [], []

        def run(i: int) -> None:
            barrier.wait()
            try:
                ids.append(record(i))
            except Exception as exc:  # noqa: BLE001 - the failure is what the test looks for
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and len(set(ids)) == 1
    with db.session() as s:
        [row] = s.scalars(select(Export)).all()
        assert row.output_url in {f"/out{i}" for i in range(4)} and row.counts == {"samples": int(row.output_url[4:])}


def test_a_failing_stage_marks_its_job_at_once_and_keeps_its_lock_until_its_batches_end(db, capsys):
    """A stop (SIGTERM) or failure mid-run marks the job at once, not after the batch processed
    ahead (a container's stop grace period may end first); the stage's lock is let go only when
    that batch has ended, or another run could take the same items meanwhile."""
    import time

    from pipelines.base import Stage

    import threading

    seen, second_started = {}, threading.Event()

    def status() -> str | None:
        with db.session() as s:
            return s.scalar(select(Job.status).where(Job.kind == "toy"))

    class Toy(Stage):
        kind = "toy"
        batch_size = 1
        exclusive = True

        def items(self):  # noqa: ANN202
            return [1, 2, 3]

        def process_batch(self, batch):  # noqa: ANN001, ANN202
            if batch == [2]:  # the batch being processed ahead when the first write fails
                second_started.set()
                deadline = time.monotonic() + 10
                while status() != "failed" and time.monotonic() < deadline:
                    time.sleep(0.02)
                seen["job failed while batch 2 ran"] = status() == "failed"
                time.sleep(0.3)
                with db.try_lock("stage:toy") as free:
                    seen["lock free while batch 2 ran"] = bool(free)
            return batch

        def write(self, session, results):  # noqa: ANN001, ANN202
            second_started.wait(10)
            raise KeyboardInterrupt  # as SIGTERM's SystemExit would, mid-write

    with pytest.raises(KeyboardInterrupt):
        Toy(db).run(progress=False)
    assert seen == {"job failed while batch 2 ran": True, "lock free while batch 2 ran": False}
    assert status() == "failed"
    assert "toy: stopping; the batch under way finishes first" in capsys.readouterr().err  # not a silent wait


def test_a_stop_while_waiting_for_a_batch_says_that_batch_finishes_first(db, capsys):
    """Ctrl-C while the stage waited for the batch under way said nothing for as long as that batch
    took: the batch was taken off the list of pending ones before it had ended."""
    import signal
    import time

    from pipelines.base import Stage

    class Slow(Stage):
        kind = "slow"
        batch_size = 1

        def items(self):  # noqa: ANN202
            return [1, 2]

        def process_batch(self, batch):  # noqa: ANN001, ANN202
            time.sleep(0.8)
            return batch

        def write(self, session, results):  # noqa: ANN001, ANN202
            pass

    def interrupt(signum, frame):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.3)  # Ctrl-C while batch 1 is being processed
    try:
        with pytest.raises(KeyboardInterrupt):
            Slow(db).run(progress=False)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert "slow: stopping; the batch under way finishes first" in capsys.readouterr().err


def test_a_database_blip_while_a_job_finishes_is_tried_again(db, monkeypatch):
    """A lost connection at the final update left the row running, its stats lost, until this
    process's next job (days, for an idle worker) reaped it as interrupted."""
    from sqlalchemy.exc import OperationalError

    import pixmo.jobs as jobs

    job_id = start_job(db, "test", {})
    real, calls = db.session, []

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))
        return real(*args, **kwargs)

    monkeypatch.setattr(db, "session", flaky)
    monkeypatch.setattr(jobs.time, "sleep", lambda s: None)
    finish_job(db, job_id, "succeeded", {"total": 2})
    monkeypatch.undo()
    assert len(calls) == 2 and _status(db, job_id)[0] == "succeeded"


def test_a_job_whose_finish_failed_is_reaped_by_the_next_one(db):
    job_id = start_job(db, "test", {})
    with pytest.raises(Exception):  # noqa: B017 - the database refuses the update (here: a bad status)
        finish_job(db, job_id, "no-such-status")
    assert _status(db, job_id)[0] == "running"
    start_job(db, "test", {})  # this process's next job: the row it could not finish is not kept alive
    assert _status(db, job_id)[0] == "failed"
