"""The transcribe stage on a real database and blob store: per-recording failures, flags, jobs,
idempotent reruns, a SIGKILL midway, and the Ray executor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from sqlalchemy import func, select

from pipelines.transcribe import transcribe_recordings
from pixmo.db.models import Job, Recording, Review, Transcript
from pixmo.projects import create_project
from tests.asr_helpers import add_image, add_recording, encode, silence, speech_clips, wer  # noqa: F401

MODEL = "faster-whisper:tiny.en"


def _project_with_recordings(db, store, clips, *, broken: bool = True, copies: int = 1) -> dict[str, int]:
    """Recordings of ``clips`` (webm, ogg, flac in turn), a silent one, and optionally a corrupt blob
    and a missing blob. Returns recording ids by name."""
    ids = {}
    with db.session() as s:
        project = create_project(s, "caps", "caption", min_seconds=5, max_seconds=120)
        image = add_image(s)
        formats = [("webm", "audio/webm"), ("ogg", "audio/ogg"), ("flac", "audio/flac")]
        for n in range(copies):
            for i, clip in enumerate(clips):
                fmt, mime = formats[i % 3]
                # a little trailing silence keeps copies distinct blobs
                samples = np.concatenate([clip.samples, silence(0.1 * n, seed=n)]) if n else clip.samples
                data = encode(samples, fmt)
                ids[f"{clip.voice}#{n}"] = add_recording(s, store, image.id, project.id, data, mime,
                                                          clip.duration_s, fmt).id
        ids["silence"] = add_recording(s, store, image.id, project.id, encode(silence(5.0), "webm"), "audio/webm",
                                       5.0, "webm").id
        if broken:
            ids["corrupt"] = add_recording(s, store, image.id, project.id, b"\x1aE\xdf\xa3" + os.urandom(400),
                                           "audio/webm", 9.0, "webm").id
            rec = add_recording(s, store, image.id, project.id, encode(clips[0].samples, "ogg"), "audio/ogg",
                                clips[0].duration_s, "ogg", key="recordings/gone.ogg")
            store.delete(rec.storage_key)
            ids["missing"] = rec.id
    return ids


def _transcripts(db) -> dict[int, Transcript]:
    with db.session() as s:
        return {t.recording_id: t for t in s.scalars(select(Transcript))}


@pytest.mark.slow
def test_stage_transcribes_flags_and_fails_per_recording(db, store, speech_clips):
    ids = _project_with_recordings(db, store, speech_clips[:3])
    stats = transcribe_recordings(db, store, "caps", batch_size=4)

    assert stats["asr_model"] == MODEL
    assert stats["statuses"] == {"ok": 4, "failed": 2}
    assert stats["reasons"] == {"not_audio": 1, "blob_missing": 1}
    assert stats["flags"] == {"no_speech": 1}
    assert stats["audio_s"] > 20 and stats["x_realtime"] > 0
    rows = _transcripts(db)
    assert len(rows) == len(ids)
    with db.session() as s:  # the audio transcribed: not the failed recordings' stored durations
        ok_audio = s.scalar(select(func.sum(Recording.duration_s)).join(Transcript, Transcript.recording_id == Recording.id)
                            .where(Transcript.status == "ok"))
    assert stats["audio_s"] == pytest.approx(ok_audio, abs=0.1)
    for clip in speech_clips[:3]:
        t = rows[ids[f"{clip.voice}#0"]]
        assert t.status == "ok" and t.asr_model == MODEL and t.job_id == stats["job_id"]
        assert wer(clip.text, t.text) <= 0.3 and t.language == "en" and t.flags == []
        assert t.metrics["duration_s"] == pytest.approx(clip.duration_s, abs=0.1) and t.segments
    quiet = rows[ids["silence"]]
    assert quiet.status == "ok" and quiet.text == "" and quiet.flags == ["no_speech"]
    assert rows[ids["corrupt"]].status == "failed" and rows[ids["corrupt"]].error.startswith("not_audio:")
    assert rows[ids["missing"]].status == "failed" and rows[ids["missing"]].error.startswith("blob_missing:")
    with db.session() as s:
        job = s.get(Job, stats["job_id"])
        assert job.kind == "transcribe" and job.status == "succeeded"
        assert job.params["asr_model"] == MODEL and job.params["project"] == "caps"
        assert job.stats["statuses"] == stats["statuses"] and job.stats["flags"] == {"no_speech": 1}

    again = transcribe_recordings(db, store, "caps")  # nothing left: a no-op run
    assert again["total"] == 0
    assert len(_transcripts(db)) == len(ids)

    # the missing blob turns up; --retry-failed tries the failed ones again, the corrupt one fails again
    store.put_bytes(encode(speech_clips[0].samples, "ogg"), key="recordings/gone.ogg")
    with db.session() as s:  # a reviewer flagged the failed row meanwhile
        failed = _transcripts(db)[ids["missing"]]
        s.add(Review(target_type="transcript", target_id=failed.id, verdict="flagged", reason="empty"))
    from pipelines.base import StageBusy

    with db.try_lock("stage:transcribe"):  # a worker is transcribing: --retry-failed touches nothing of its
        with pytest.raises(StageBusy):
            transcribe_recordings(db, store, "caps", retry_failed=True)
    assert _transcripts(db)[ids["missing"]].status == "failed"  # (the failed rows used to be deleted first)
    retry = transcribe_recordings(db, store, "caps", retry_failed=True)
    with db.session() as s:  # the verdict went with the failed row it was on
        assert s.scalar(select(func.count()).select_from(Review)) == 0
    assert retry["statuses"] == {"ok": 1, "failed": 1}
    rows = _transcripts(db)
    assert rows[ids["missing"]].status == "ok" and wer(speech_clips[0].text, rows[ids["missing"]].text) <= 0.3
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Transcript)) == len(ids)


def _cli(db, store, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PIXMO_ENV": "test", "PIXMO_DATABASE_URL": db.url, "PIXMO_STORAGE_URL": f"file://{store.root}"}
    cmd = [sys.executable, "-m", "pixmo.cli", "transcribe", "--project", "caps", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _signal_after_the_first_transcript(proc: subprocess.Popen, db, sig: int) -> None:
    """Send ``sig`` to a running `pixmo transcribe` once it has written a transcript; wait for it to end."""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            with db.session() as s:
                if s.scalar(select(func.count()).select_from(Transcript)):
                    break
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigkill_midway_then_rerun_gives_one_transcript_per_recording(db, store, speech_clips):
    ids = _project_with_recordings(db, store, speech_clips[:2], broken=False, copies=3)  # 7 recordings
    proc = _cli(db, store, "--batch-size", "1", "--json")
    _signal_after_the_first_transcript(proc, db, signal.SIGKILL)  # no cleanup, no final commit, no job status
    done = len(_transcripts(db))
    assert 1 <= done < len(ids), "the kill must land midway"

    rerun = _cli(db, store, "--json")
    out, errors = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, errors
    stats = json.loads(out)
    assert stats["statuses"] == {"ok": len(ids) - done}
    rows = _transcripts(db)
    assert sorted(rows) == sorted(ids.values()) and all(t.status == "ok" for t in rows.values())
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Transcript)) == len(ids)
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        # the killed run never finished: the rerun found its process gone and marked it
        assert [j.status for j in jobs] == ["failed", "succeeded"] and jobs[0].error.startswith("interrupted")


@pytest.mark.slow
def test_ray_executor_gives_the_same_transcripts_as_local(sqlite_db, store, speech_clips, ray_local):
    ids = _project_with_recordings(sqlite_db, store, speech_clips, broken=True)
    # same batches (2 recordings per actor call) and threads per model: the same arithmetic
    on_ray = transcribe_recordings(sqlite_db, store, "caps", executor="ray", actors=2, batch_size=2, cpu_threads=1)
    assert on_ray["statuses"] == {"ok": 5, "failed": 2}
    ray_rows = {rid: (t.status, t.text, t.flags, t.error) for rid, t in _transcripts(sqlite_db).items()}
    assert len(ray_rows) == len(ids)

    with sqlite_db.session() as s:
        s.execute(Transcript.__table__.delete())
    # in a process of its own with one OpenMP thread, as Ray gives an actor of one CPU: CTranslate2
    # (4.8) runs some operations on OpenMP's threads whatever cpu_threads says, and their count
    # changes the floating-point sums, and so now and then a word
    code = ("import json, sys; from pixmo.db.session import Database; from pixmo.storage import open_store; "
            "from pipelines.transcribe import transcribe_recordings; "
            "print(json.dumps(transcribe_recordings(Database(sys.argv[1]), open_store(sys.argv[2]), 'caps', "
            "batch_size=2, cpu_threads=1), default=str))")
    done = subprocess.run([sys.executable, "-c", code, sqlite_db.url, f"file://{store.root}"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PIXMO_ENV": "test", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    local = json.loads(done.stdout.strip().splitlines()[-1])
    local_rows = {rid: (t.status, t.text, t.flags, t.error) for rid, t in _transcripts(sqlite_db).items()}
    assert local["statuses"] == on_ray["statuses"] and local["flags"] == on_ray["flags"]
    assert local_rows == ray_rows


def test_ray_actor_count_follows_cpus_and_caps_by_gpus():
    from pipelines.ray_pool import actor_count

    assert actor_count({"CPU": 8}) == 8
    assert actor_count({"CPU": 8}, cpus_per_actor=3) == 2
    assert actor_count({"CPU": 1}, cpus_per_actor=4) == 1  # at least one
    assert actor_count({"CPU": 8}, actors=3) == 3
    assert actor_count({"CPU": 8, "GPU": 2}, actors=6, gpus_per_actor=1.0) == 2
    assert actor_count({"CPU": 8, "GPU": 2}, gpus_per_actor=0.5) == 4
    assert actor_count({"CPU": 8}, gpus_per_actor=1.0) == 1  # no GPU seen: one, Ray queues it


def test_a_negative_limit_is_refused(sqlite_db, store):
    from pixmo.errors import ValidationError

    with pytest.raises(ValidationError, match="limit must be 0 or more"):  # SQLite read LIMIT -1 as no limit
        transcribe_recordings(sqlite_db, store, limit=-1)


@pytest.mark.slow
def test_sigterm_marks_the_running_job_failed(db, store, speech_clips):
    """A stop (docker compose stop: SIGTERM) left the job row 'running' for good."""
    _project_with_recordings(db, store, speech_clips[:2], broken=False, copies=3)
    proc = _cli(db, store, "--batch-size", "1")
    _signal_after_the_first_transcript(proc, db, signal.SIGTERM)
    assert proc.returncode == 128 + signal.SIGTERM
    with db.session() as s:
        (job,) = s.scalars(select(Job)).all()
    assert job.status == "failed" and job.error.startswith("SystemExit") and job.finished_at is not None


def test_a_store_that_does_not_answer_defers_the_recording(sqlite_db, store, speech_clips, monkeypatch):
    """A storage error (MinIO down for a moment) was stored as a failed transcript, which no later
    run of the worker retried: the recording was never transcribed."""
    from pixmo.errors import StorageError

    ids = _project_with_recordings(sqlite_db, store, speech_clips[:1], broken=False)
    with sqlite_db.session() as s:
        down_key = s.get(Recording, ids["silence"]).storage_key
    real_get = store.get_bytes

    def flaky(key):
        if key == down_key:
            raise StorageError("could not connect to the endpoint")
        return real_get(key)

    monkeypatch.setattr(store, "get_bytes", flaky)
    first = transcribe_recordings(sqlite_db, store, "caps")
    assert first["statuses"] == {"ok": 1, "deferred": 1} and first["reasons"] == {"storage_error": 1}
    assert ids["silence"] not in _transcripts(sqlite_db)
    monkeypatch.setattr(store, "get_bytes", real_get)  # the store is back
    second = transcribe_recordings(sqlite_db, store, "caps")
    assert second["statuses"] == {"ok": 1} and _transcripts(sqlite_db)[ids["silence"]].status == "ok"


@pytest.mark.slow
def test_an_english_only_model_leaves_recordings_pinned_to_another_language(sqlite_db, store, speech_clips):
    """tiny.en decoded German speech as English and stored it ok with language "en": a project
    pinned to another language now waits for a multilingual model, and the model refuses it."""
    from pixmo.asr import load_asr
    from pixmo.errors import ConfigError
    from pixmo.projects import get_project

    ids = _project_with_recordings(sqlite_db, store, speech_clips[:1], broken=False)
    with sqlite_db.session() as s:
        project = get_project(s, "caps")
        project.config = {**project.config, "language": "de"}
    stats = transcribe_recordings(sqlite_db, store, "caps")
    # not planned at all (a worker with nothing else to do stays idle), and counted
    assert stats["total"] == 0 and stats["other_language"] == 2
    assert _transcripts(sqlite_db) == {}
    stats = transcribe_recordings(sqlite_db, store, "caps", language="en")  # pinned to English by hand: done
    assert stats["statuses"] == {"ok": 2} and set(_transcripts(sqlite_db)) == set(ids.values())
    with pytest.raises(ConfigError, match="English-only"):
        load_asr().transcribe(speech_clips[0].samples, "de")


@pytest.mark.slow
def test_a_failure_every_recording_hits_alike_fails_the_run_not_the_recordings(sqlite_db, store, speech_clips, monkeypatch):
    """A model that cannot run at all (faster-whisper's 'libcublas.so.12 is not found' comes at the
    first encode) used to store every pending recording as failed for good, in a succeeded job."""
    from pixmo.asr.base import ASRModel

    _project_with_recordings(sqlite_db, store, speech_clips[:2], broken=False)

    def broken(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        raise RuntimeError("Library libcublas.so.12 is not found or cannot be loaded")

    monkeypatch.setattr(ASRModel, "transcribe", broken)
    with pytest.raises(RuntimeError, match="libcublas"):
        transcribe_recordings(sqlite_db, store, "caps")
    assert _transcripts(sqlite_db) == {}
    with sqlite_db.session() as s:
        job = s.scalars(select(Job).order_by(Job.id.desc())).first()
    assert job.status == "failed" and "libcublas" in job.error
    monkeypatch.undo()
    assert transcribe_recordings(sqlite_db, store, "caps")["statuses"] == {"ok": 3}  # fixed: all transcribed
