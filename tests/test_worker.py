"""`pixmo worker` (pipelines.worker): rounds of transcribe → clean → merge on the real bundled models;
idle steps leave no job row, a step another worker holds is skipped, failures do not stop the round."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from sqlalchemy import select

from pipelines.worker import Worker, WorkerOptions
from pixmo.db.models import Caption, Job, Transcript
from pixmo.errors import ValidationError
from pixmo.projects import create_project
from tests.asr_helpers import add_image, add_recording, encode, speech_clips  # noqa: F401
from tests.llm_helpers import local_backend  # noqa: F401


def _jobs(db) -> list[tuple[str, str]]:
    with db.session() as s:
        return [(j.kind, j.status) for j in s.scalars(select(Job).order_by(Job.id))]


def _recording(db, store, clip, project_id: int, name: str = "img") -> None:
    with db.session() as s:
        image = add_image(s, name)
        add_recording(s, store, image.id, project_id, encode(clip.samples, "webm"), "audio/webm", clip.duration_s, "webm")


def test_rounds_transcribe_then_clean_keep_the_models_and_idle_steps_leave_no_job(
        db, store, speech_clips, local_backend, monkeypatch):
    import pipelines.transcribe

    loads = []
    real = pipelines.transcribe.RecordingTranscriber

    class Counted(real):
        def __init__(self, *args, **kwargs):  # noqa: ANN002, ANN003
            loads.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pipelines.transcribe, "RecordingTranscriber", Counted)
    with db.session() as s:
        project = create_project(s, "caps", "caption", min_seconds=1, max_seconds=120).id
    _recording(db, store, speech_clips[0], project)
    worker = Worker(db, store, WorkerOptions(rewrite={"max_tokens": 20}), llm=local_backend)
    seen = []

    def report(run):  # noqa: ANN001, ANN202
        seen.append((run.step, run.status))

    worker.round(report)  # the recording is transcribed, its transcript cleaned; one per image: no merge
    worker.round(report)  # nothing new anywhere
    _recording(db, store, speech_clips[1], project, "img2")
    worker.round(report)  # a new recording: transcribed with the model already loaded
    assert seen == [("transcribe", "done"), ("clean", "done"), ("merge", "idle"),
                    ("transcribe", "idle"), ("clean", "idle"), ("merge", "idle"),
                    ("transcribe", "done"), ("clean", "done"), ("merge", "idle")]
    assert loads == [1]  # Whisper loaded once for every round
    assert _jobs(db) == [("transcribe", "succeeded"), ("rewrite.clean", "succeeded")] * 2
    with db.session() as s:
        transcripts = list(s.scalars(select(Transcript).order_by(Transcript.id)))
        captions = list(s.scalars(select(Caption).order_by(Caption.id)))
    assert all("faster-whisper" in t.asr_model and t.text.strip() for t in transcripts) and len(transcripts) == 2
    assert [c.source_transcript_ids for c in captions] == [[t.id] for t in transcripts]
    assert {c.model for c in captions} == {local_backend.model_id}


@pytest.mark.slow
def test_recordings_the_model_cannot_transcribe_leave_the_worker_idle(db, store, speech_clips):
    """Recordings of a project in another language, with the English-only default model, were planned
    and deferred every round: a job row a minute, for good."""
    with db.session() as s:
        project = create_project(s, "de-caps", "caption", min_seconds=1, max_seconds=120, language="de").id
    _recording(db, store, speech_clips[0], project)
    worker = Worker(db, store, WorkerOptions(steps=("transcribe",)))
    seen = []
    worker.round(lambda run: seen.append((run.step, run.status)))
    worker.round(lambda run: seen.append((run.step, run.status)))
    assert seen == [("transcribe", "idle")] * 2 and _jobs(db) == []


def test_a_step_another_run_holds_is_skipped_and_a_manual_run_is_refused(db, store, speech_clips):
    from pipelines.base import StageBusy
    from pipelines.transcribe import transcribe_recordings

    with db.session() as s:
        project = create_project(s, "caps", "caption", min_seconds=1, max_seconds=120).id
    _recording(db, store, speech_clips[0], project)
    worker = Worker(db, store, WorkerOptions(steps=("transcribe",)))
    with db.try_lock("stage:transcribe") as held:  # as a worker or a `pixmo transcribe` elsewhere holds it
        assert held
        with db.try_lock("stage:transcribe") as again:
            assert not again  # one holder at a time, even within a process
        assert [r.status for r in worker.round()] == ["busy"]
        with pytest.raises(StageBusy, match="another transcribe run"):
            transcribe_recordings(db, store)
    assert _jobs(db) == []  # refused before anything was recorded


def test_any_error_fails_only_its_step_with_one_traceback_per_kind(db, store, monkeypatch, caplog):
    worker = Worker(db, store, WorkerOptions(steps=("transcribe", "clean")))
    real = worker._stage

    def broken(step):  # noqa: ANN001, ANN202
        if step == "transcribe":
            raise ConnectionError("the database went away")
        return real(step)

    monkeypatch.setattr(worker, "_stage", broken)
    worker._transcriber = object()  # a model loaded by an earlier round
    runs = worker.round()
    assert [(r.step, r.status) for r in runs] == [("transcribe", "failed"), ("clean", "idle")]
    assert runs[0].error == "ConnectionError: the database went away"
    assert worker._transcriber is None  # an unexpected error may have left it unusable: loaded afresh next time
    worker.round()  # the database is still gone: reported again, its traceback not logged again
    assert sum(1 for r in caplog.records if r.exc_info) == 1
    # an error of the database itself keeps the models: an hour's outage must not reload them each round
    from sqlalchemy.exc import OperationalError

    def db_down(step):  # noqa: ANN001, ANN202
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(worker, "_stage", db_down)
    kept = worker._transcriber = object()
    assert [r.status for r in worker.round()] == ["failed", "failed"] and worker._transcriber is kept


def test_the_step_lock_holds_across_processes_and_dies_with_its_holder(sqlite_db):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pixmo.db.session import Database
            with Database({sqlite_db.url!r}).try_lock("stage:rewrite.clean") as held:
                print(bool(held), flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        with sqlite_db.try_lock("stage:rewrite.clean") as held:
            assert not held
        with sqlite_db.try_lock("stage:rewrite.merge") as held:
            assert held  # each step has its own lock
        # the same file by a link or as a URI filename is the same lock
        import os
        from pixmo.db.session import Database

        path = sqlite_db.url.removeprefix("sqlite:///")
        link = path + ".link"
        os.symlink(path, link)
        for url in (f"sqlite:///{link}", f"sqlite:///file:{path}?uri=true"):
            with Database(url).try_lock("stage:rewrite.clean") as held:
                assert not held, url
    finally:
        holder.kill()
        holder.wait()
    with sqlite_db.try_lock("stage:rewrite.clean") as held:
        assert held  # a killed holder leaves no stale lock


def test_a_failing_step_is_reported_and_the_round_goes_on(db, store):
    with pytest.raises(ValidationError, match="no project named 'no-such-project'"):  # at once, not every round
        Worker(db, store, WorkerOptions(project="no-such-project"))
    worker = Worker(db, store, WorkerOptions(steps=("transcribe", "clean"), transcribe={"backend": "nope"},
                                             rewrite={"prompt_version": "v999"}))
    runs = worker.round()
    assert [(r.step, r.status) for r in runs] == [("transcribe", "failed"), ("clean", "failed")]
    assert "unknown ASR backend 'nope'" in runs[0].error and "v999" in runs[1].error


def test_options_for_one_run_are_refused_for_a_worker():
    """retry_failed in a worker's options deleted and redid every failed row each round, for good."""
    for options in ({"rewrite": {"retry_failed": True}}, {"transcribe": {"limit": 5}}):
        with pytest.raises(ValidationError, match="not for every round"):
            WorkerOptions(**options)


def test_unknown_steps_are_refused():
    with pytest.raises(ValidationError, match="unknown step"):
        WorkerOptions(steps=("transcribe", "translate"))
    with pytest.raises(ValidationError, match="none given"):
        WorkerOptions(steps=())


def test_a_lock_file_made_by_another_user_is_still_used(sqlite_db, monkeypatch):
    import os

    import pixmo.db.session

    with sqlite_db.try_lock("stage:transcribe"):
        pass  # the lock file exists now (as another user's process would have left it)
    real_open = os.open

    def not_writable(path, flags, *args):  # noqa: ANN001, ANN002, ANN202
        if str(path).endswith(".lock") and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(pixmo.db.session.os, "open", not_writable)
    with sqlite_db.try_lock("stage:transcribe") as held:
        assert held  # flock needs no write access
        with sqlite_db.try_lock("stage:transcribe") as again:
            assert not again


def test_a_blob_the_store_never_gives_is_failed_after_some_rounds(db, store, speech_clips, monkeypatch):
    """A recording whose blob could never be read (access denied) was deferred every round: a jobs
    row a minute, for good. After WORKER_STORAGE_ROUNDS rounds it is failed, and the worker idles."""
    import pipelines.transcribe
    from pixmo.errors import StorageError

    monkeypatch.setattr(pipelines.transcribe, "WORKER_STORAGE_ROUNDS", 3)
    with db.session() as s:
        project = create_project(s, "caps", "caption", min_seconds=1, max_seconds=120).id
    _recording(db, store, speech_clips[0], project)
    real_get = store.get_bytes
    reads = []

    def denied(key):  # noqa: ANN001, ANN202
        if key.startswith("sha256/"):
            raise StorageError(f"AccessDenied reading {key}")
        return real_get(key)

    monkeypatch.setattr(store, "get_bytes", lambda key: reads.append(key) or denied(key))
    worker = Worker(db, store, WorkerOptions(steps=("transcribe",)))
    runs = [worker.round()[0] for _ in range(4)]
    assert [r.status for r in runs] == ["done", "done", "done", "idle"]
    assert [r.stats["statuses"] for r in runs[:3]] == [{"deferred": 1}, {"deferred": 1}, {"failed": 1}]
    assert len(reads) == 3 and len(_jobs(db)) == 3
    with db.session() as s:
        (transcript,) = s.scalars(select(Transcript)).all()
    assert transcript.status == "failed" and "AccessDenied" in transcript.error and "3 rounds in a row" in transcript.error
    # a single run, however often it met the error, leaves the recording to the next run
    from pipelines.transcribe import transcribe_recordings

    with db.session() as s:
        s.delete(s.scalars(select(Transcript)).one())
    for _ in range(4):
        assert transcribe_recordings(db, store)["statuses"] == {"deferred": 1}
