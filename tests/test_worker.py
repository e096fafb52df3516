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


def test_a_round_transcribes_then_cleans_and_idle_steps_leave_no_job(db, store, speech_clips, local_backend):
    clip = speech_clips[0]
    with db.session() as s:
        project = create_project(s, "caps", "caption", min_seconds=1, max_seconds=120)
        image = add_image(s)
        add_recording(s, store, image.id, project.id, encode(clip.samples, "webm"), "audio/webm", clip.duration_s, "webm")
    worker = Worker(db, store, WorkerOptions(rewrite={"max_tokens": 20}), llm=local_backend)
    seen = []
    worker.run(interval=0, rounds=2, report=lambda r: seen.append((r.step, r.status)), sleep=lambda s: None)
    # round 1: the recording is transcribed, its transcript cleaned; one transcript per image: no merge
    # round 2: nothing new anywhere
    assert seen == [("transcribe", "done"), ("clean", "done"), ("merge", "idle"),
                    ("transcribe", "idle"), ("clean", "idle"), ("merge", "idle")]
    assert _jobs(db) == [("transcribe", "succeeded"), ("rewrite.clean", "succeeded")]
    with db.session() as s:
        transcript = s.scalars(select(Transcript)).one()
        caption = s.scalars(select(Caption)).one()
    assert "faster-whisper" in transcript.asr_model and transcript.text.strip()
    assert caption.source_transcript_ids == [transcript.id] and caption.model == local_backend.model_id


def test_a_step_another_worker_holds_is_skipped(db, store):
    worker = Worker(db, store, WorkerOptions(steps=("transcribe",)))
    with db.try_lock("pipeline-step:transcribe") as held:
        assert held
        with db.try_lock("pipeline-step:transcribe") as again:
            assert not again  # one holder at a time, even within a process
        assert [r.status for r in worker.round()] == ["busy"]
    assert [r.status for r in worker.round()] == ["idle"]  # free again once released
    assert _jobs(db) == []


def test_the_step_lock_holds_across_processes_and_dies_with_its_holder(sqlite_db):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from pixmo.db.session import Database
            with Database({sqlite_db.url!r}).try_lock("pipeline-step:clean") as held:
                print(held, flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "True"
        with sqlite_db.try_lock("pipeline-step:clean") as held:
            assert not held
        with sqlite_db.try_lock("pipeline-step:merge") as held:
            assert held  # each step has its own lock
    finally:
        holder.kill()
        holder.wait()
    with sqlite_db.try_lock("pipeline-step:clean") as held:
        assert held  # a killed holder leaves no stale lock


def test_a_failing_step_is_reported_and_the_round_goes_on(db, store):
    worker = Worker(db, store, WorkerOptions(steps=("transcribe", "clean"), project="no-such-project"))
    runs = worker.round()
    assert [(r.step, r.status) for r in runs] == [("transcribe", "failed"), ("clean", "failed")]
    assert all("no project named 'no-such-project'" in r.error for r in runs)


def test_unknown_steps_are_refused():
    with pytest.raises(ValidationError, match="unknown step"):
        WorkerOptions(steps=("transcribe", "translate"))
    with pytest.raises(ValidationError, match="none given"):
        WorkerOptions(steps=())
