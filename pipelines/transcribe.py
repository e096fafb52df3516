"""The transcribe stage: every recording without a transcript for this model gets one.

Pending work is read once at the start (recordings that have no ``transcripts`` row for the
model id); each batch is written in one transaction with ``INSERT ... ON CONFLICT DO NOTHING`` on
(recording_id, asr_model), so a rerun after a crash does only what is left and never duplicates.
A recording that cannot be read, decoded or transcribed is stored as ``failed`` with its reason;
the others go on.

Executors run the same :class:`RecordingTranscriber`: ``local`` in this process (audio for the
next batches is fetched and decoded in threads while the model works), ``ray`` on Ray actors
(one model per actor; a local Ray instance, or a cluster address).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError as PydanticValidationError
from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from pixmo.asr import QualityThresholds, Transcription, asr_model_id, load_asr
from pixmo.asr.files import prefetch
from pixmo.audio import AudioError, DecodedAudio, decode_audio
from pixmo.db.models import Project, Recording, Transcript
from pixmo.db.queries import delete_with_reviews, insert_ignore
from pixmo.db.session import Database
from pixmo.errors import BlobNotFoundError, ConfigError, StorageError, ValidationError
from pixmo.progress import Progress
from pixmo.storage import BlobStore
from pipelines.base import Stage, StageStats, stats_table
from pipelines.ray_pool import RayPool
from schemas.transcript import TranscriptRecord

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class TranscribeParams:
    """What one run does; copied into the job row."""

    project: str | None = None
    backend: str = "faster-whisper"
    model: str | None = None
    device: str = "cpu"
    compute_type: str | None = None
    batch_size: int = 8  # recordings per batch (their speech windows are decoded together)
    beam_size: int = 5
    language: str | None = None  # default: the project's language; auto-detect without a project
    executor: str = "local"
    ray_address: str | None = None
    actors: int | None = None  # Ray: model replicas (default: one per `cpus_per_actor` CPUs)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float | None = None  # Ray: default 1 when device is cuda
    cpu_threads: int = 0  # faster-whisper threads per model worker (0: share the cores out)
    num_workers: int | None = None  # faster-whisper workers decoding in parallel (CPU: one per core)
    limit: int | None = None
    retry_failed: bool = False  # delete this model's failed rows first, so they are tried again
    download_root: str | None = None
    asr_model: str = ""  # filled in: the model id written to transcripts.asr_model


@dataclass(frozen=True)
class RecordingRef:
    """One pending recording and what its transcript depends on."""

    id: int
    storage_key: str
    duration_s: float
    language: str | None
    thresholds: QualityThresholds


@dataclass
class RecordingResult:
    ref: RecordingRef
    status: str  # ok | failed
    reason: str | None = None
    error: str | None = None
    transcription: Transcription | None = None


@dataclass
class TranscribeStats(StageStats):
    """StageStats plus audio seconds (of the recordings transcribed, not of failed or existing
    ones), ×realtime and flag counts."""

    audio_s: float = 0.0
    speech_s: float = 0.0
    flags: Counter = field(default_factory=Counter)
    other_language: int = 0  # recordings pinned to a language this English-only model cannot do

    def as_dict(self) -> dict[str, Any]:
        out = super().as_dict()
        elapsed = out["elapsed_s"]
        out.update(
            audio_s=round(self.audio_s, 1),
            audio_hours=round(self.audio_s / 3600, 4),
            speech_s=round(self.speech_s, 1),
            x_realtime=round(self.audio_s / elapsed, 2) if elapsed > 0 else None,
            flags=dict(self.flags),
            other_language=self.other_language,
        )
        return out


# failures of the moment, or of this model, not of the recording: nothing is stored for them
TRANSIENT_REASONS = frozenset({"storage_error", "language_unsupported"})
# a worker's rounds in a row that a recording's blob may fail to read before it is failed for good
# (--retry-failed tries it again): a blob the store will never give (access denied, archived) made a
# jobs row every round, for ever
WORKER_STORAGE_ROUNDS = 10


class _Failed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class RecordingTranscriber:
    """Fetches recordings from the blob store, decodes them and transcribes them in batches.

    The unit of work of both executors: the local one calls :meth:`load` in threads and
    :meth:`transcribe` on the results; a Ray actor calls :meth:`process`.
    """

    def __init__(self, store: BlobStore, asr_kwargs: dict[str, Any]):
        self.store = store
        self.asr = load_asr(**asr_kwargs)

    def load(self, ref: RecordingRef) -> DecodedAudio | _Failed:
        if ref.language not in (None, "en") and not self.asr.is_multilingual:
            # English-only models decode any speech as English: left for a multilingual model
            return _Failed("language_unsupported", f"{self.asr.model_id} is English-only and this recording is "
                           f"pinned to {ref.language!r}: transcribe it with a multilingual model (--model)")
        try:
            data = self.store.get_bytes(ref.storage_key)
        except BlobNotFoundError:
            return _Failed("blob_missing", ref.storage_key)
        except StorageError as exc:
            return _Failed("storage_error", str(exc))
        try:
            return decode_audio(data)
        except AudioError as exc:
            return _Failed(exc.reason, exc.detail)

    def transcribe(
        self, refs: Sequence[RecordingRef], loaded: Sequence[DecodedAudio | _Failed]
    ) -> list[RecordingResult]:
        results: list[RecordingResult | None] = [None] * len(refs)
        todo = []
        for i, (ref, item) in enumerate(zip(refs, loaded, strict=True)):
            if isinstance(item, _Failed):
                results[i] = RecordingResult(ref, "failed", item.reason, str(item))
            else:
                todo.append(i)
        try:
            done = self._run([refs[i] for i in todo], [loaded[i] for i in todo])
        except Exception as batch_error:  # noqa: BLE001 - find the one recording that breaks the batch
            done, errors = [], []
            for i in todo:
                try:
                    done += self._run([refs[i]], [loaded[i]])
                except Exception as exc:  # noqa: BLE001 - a failed sample is data
                    errors.append(exc)
                    detail = f"asr_error: {type(exc).__name__}: {exc}"
                    done.append(RecordingResult(refs[i], "failed", "asr_error", detail))
            if len(todo) > 1 and len(errors) == len(todo) and len({(type(e), str(e)) for e in errors}) == 1:
                # every recording alone fails alike: the model or the machine is at fault (a missing
                # CUDA library, no GPU memory), not the recordings; failing them would be for good
                raise errors[0] from batch_error
        for i, result in zip(todo, done, strict=True):
            results[i] = result
        return results  # type: ignore[return-value]

    def _run(self, refs: Sequence[RecordingRef], audios: Sequence[DecodedAudio]) -> list[RecordingResult]:
        if not refs:
            return []
        out, _ = self.asr.transcribe(
            [a.samples for a in audios], [r.language for r in refs], [r.thresholds for r in refs]
        )
        return [RecordingResult(r, "ok", transcription=t) for r, t in zip(refs, out, strict=True)]

    def process(self, refs: Sequence[RecordingRef]) -> list[RecordingResult]:
        """Load and transcribe ``refs`` (what a Ray actor runs)."""
        return self.transcribe(refs, [self.load(r) for r in refs])


class TranscribeStage(Stage[tuple[RecordingRef, "Future | None"], RecordingResult]):
    """Transcribe every recording (of a project) that has no transcript for the model yet."""

    kind = "transcribe"
    exclusive = True

    def __init__(self, db: Database, store: BlobStore, params: TranscribeParams, *,
                 transcriber: RecordingTranscriber | None = None, deferrals: dict[int, int] | None = None):
        if params.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {params.executor!r}; use one of {', '.join(EXECUTORS)}")
        if params.batch_size < 1:
            raise ValidationError("batch size must be at least 1")
        params = replace(params, asr_model=asr_model_id(params.backend, params.model))
        super().__init__(db, params)
        self.stats = TranscribeStats()
        self.store = store
        self.model_id = params.asr_model
        self.project_id: int | None = None
        if params.project:
            with db.session() as session:
                project = session.scalars(select(Project).where(Project.name == params.project)).first()
                if project is None:
                    raise ValidationError(f"no project named {params.project!r}")
                self.project_id = project.id
        self._refs = self._pending()
        self._worker: RecordingTranscriber | None = None
        # a model loaded by an earlier run (local executor): `pixmo worker` keeps one for every round
        self.transcriber = transcriber
        # the worker's count, per recording, of rounds in a row its blob could not be read (None: a
        # single run, which leaves such recordings to the next one however often that happened)
        self.deferrals = deferrals
        self._pool: RayPool | None = None
        self.batch_size = params.batch_size
        self._bar: _AudioProgress | None = None

    def prepare(self) -> None:
        if self.params.retry_failed:
            self._delete_failed()
            self.stats.other_language = 0
            self._refs = self._pending()  # the deleted rows' recordings are pending now

    # -- what to do ------------------------------------------------------------------------
    def _pending(self) -> list[RecordingRef]:
        p = self.params
        done = exists().where(Transcript.recording_id == Recording.id, Transcript.asr_model == self.model_id)
        query = (
            select(Recording.id, Recording.storage_key, Recording.duration_s, Project.config)
            .outerjoin(Project, Project.id == Recording.project_id)
            .where(~done)
            .order_by(Recording.id)
        )
        if self.project_id is not None:
            query = query.where(Recording.project_id == self.project_id)
        if p.limit is not None:
            query = query.limit(p.limit)
        with self.db.session() as session:
            rows = session.execute(query).all()
        refs = []
        for rid, key, duration, config in rows:
            config = config or {}
            thresholds = QualityThresholds()
            if config.get("min_seconds"):
                # too_short: less speech than half the project's shortest accepted recording
                thresholds = replace(thresholds, min_speech_s=0.5 * float(config["min_seconds"]))
            language = p.language or config.get("language")
            if language not in (None, "en") and self.model_id.endswith(".en"):
                # an English-only Whisper (tiny.en, ...): left for a multilingual model, and not
                # planned, so a worker with nothing else to do stays idle instead of a job a round
                self.stats.other_language += 1
                continue
            refs.append(RecordingRef(rid, key, float(duration or 0.0), language, thresholds))
        return refs

    def _delete_failed(self) -> None:
        query = select(Transcript.id).where(Transcript.asr_model == self.model_id, Transcript.status == "failed")
        if self.project_id is not None:
            query = query.where(Transcript.recording_id.in_(
                select(Recording.id).where(Recording.project_id == self.project_id)))
        with self.db.session(write_lock=True) as session:
            delete_with_reviews(session, "transcript", list(session.scalars(query)))

    def _asr_kwargs(self) -> dict[str, Any]:
        p = self.params
        return {"backend": p.backend, "model": p.model, "device": p.device, "compute_type": p.compute_type,
                "batch_size": p.batch_size, "beam_size": p.beam_size, "cpu_threads": p.cpu_threads,
                "num_workers": p.num_workers, "download_root": p.download_root}

    # -- Stage hooks ---------------------------------------------------------------------------
    def items(self) -> Iterator[tuple[RecordingRef, Future | None]]:
        if not self._refs:
            return iter(())
        if self._pool is not None:  # Ray actors fetch and decode themselves
            return ((ref, None) for ref in self._refs)
        return prefetch(self._worker.load, self._refs, ahead=2 * self.params.batch_size)

    def total(self) -> int:
        return len(self._refs)

    def process_batch(self, batch: Sequence[tuple[RecordingRef, Future | None]]) -> list[RecordingResult]:
        refs = [ref for ref, _ in batch]
        if self._pool is None:
            return self._worker.transcribe(refs, [fut.result() for _, fut in batch])
        size = self.params.batch_size
        shards = [refs[i : i + size] for i in range(0, len(refs), size)]
        return [r for part in self._pool.map(lambda actor, shard: actor.process.remote(shard), shards) for r in part]

    def _gives_up(self, r: RecordingResult) -> bool:
        """Whether the worker stops deferring this recording (see WORKER_STORAGE_ROUNDS)."""
        if self.deferrals is None or r.reason != "storage_error":
            return False
        self.deferrals[r.ref.id] = rounds = self.deferrals.get(r.ref.id, 0) + 1
        if rounds < WORKER_STORAGE_ROUNDS:
            return False
        del self.deferrals[r.ref.id]
        r.error = f"{r.error} (unreadable for {rounds} rounds in a row)"
        return True

    def write(self, session: Session, results: list[RecordingResult]) -> None:
        for r in results:
            if r.status == "failed" and r.reason in TRANSIENT_REASONS and not self._gives_up(r):
                # the store did not answer (MinIO restarting, a network blip): no row, so the next
                # run (the worker's next loop) tries the recording again instead of never
                self.stats.record("deferred", r.reason, f"recording {r.ref.id}")
                continue
            record = _record(self.model_id, r)
            row = record.model_dump(mode="json", exclude={"duration_s"})
            row.update(recording_id=r.ref.id, job_id=self.job_id, metrics=row["metrics"] or {})
            inserted = insert_ignore(session, Transcript, [row], ["recording_id", "asr_model"])
            status = r.status if inserted else "exists"
            self.stats.record(status, r.reason if inserted else None, f"recording {r.ref.id}")
            if r.transcription is not None and inserted:  # audio this run decoded and transcribed
                self.stats.audio_s += r.ref.duration_s
                self.stats.speech_s += r.transcription.metrics["speech_s"]
                self.stats.flags.update(r.transcription.flags)
        if self._bar is not None:
            self._bar.advance(len(results), sum(r.ref.duration_s for r in results))

    # -- the run -----------------------------------------------------------------------------------
    def execute(self, *, progress: bool, pipeline_depth: int) -> dict[str, Any]:  # noqa: D102
        if self._refs:
            self._start_executor()
        self._bar = _AudioProgress(len(self._refs), sum(r.duration_s for r in self._refs), enabled=progress)
        try:
            return super().execute(progress=False, pipeline_depth=pipeline_depth)
        finally:
            self._bar.close()
            self._stop_executor()

    def _start_executor(self) -> None:
        p = self.params
        if p.executor == "local":
            if self.transcriber is None:
                self.transcriber = RecordingTranscriber(self.store, self._asr_kwargs())
            self._worker = self.transcriber
            return
        gpus = p.gpus_per_actor if p.gpus_per_actor is not None else (1.0 if p.device == "cuda" else 0.0)
        kwargs = self._asr_kwargs()
        if p.device == "cpu" and not p.cpu_threads:  # each actor decodes on its own CPUs
            kwargs["cpu_threads"] = max(1, int(p.cpus_per_actor))
        kwargs["num_workers"] = p.num_workers or 1
        # the store goes to the actors by pickle: S3 stores pickle by recipe (S3Store.__reduce__)
        self._pool = RayPool(RecordingTranscriber, self.store, kwargs, address=p.ray_address, actors=p.actors,
                             cpus_per_actor=p.cpus_per_actor, gpus_per_actor=gpus)
        self.batch_size = p.batch_size * len(self._pool)  # one shard of batch_size recordings per actor

    def _stop_executor(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None
        self._worker = None


def _record(model_id: str, r: RecordingResult) -> TranscriptRecord:
    """The validated record of one result (what goes into the transcripts row).

    Output that breaks the contract becomes a failed row (``invalid_output``), not a failed run.
    """
    if r.transcription is not None:
        try:
            return TranscriptRecord.model_validate({"asr_model": model_id, "status": "ok", **r.transcription.to_dict()})
        except PydanticValidationError as exc:
            r.status, r.reason, r.transcription = "failed", "invalid_output", None
            r.error = f"invalid_output: {exc.errors()[0]['msg']}"
    return TranscriptRecord(asr_model=model_id, status="failed", error=r.error or r.reason or "failed")


class _AudioProgress:
    """Progress in recordings and audio hours, with the ×realtime rate (stderr), or nothing."""

    def __init__(self, total: int, total_audio_s: float, enabled: bool):
        self._audio_s = 0.0
        self._total_h = total_audio_s / 3600
        self._started = time.perf_counter()
        self._bar = Progress("transcribe", total, enabled, note=self._audio_text())

    def _audio_text(self) -> str:
        elapsed = time.perf_counter() - self._started
        rate = self._audio_s / elapsed if elapsed > 0 and self._audio_s else 0.0
        return f"{self._audio_s / 3600:.2f}/{self._total_h:.2f} h audio · {rate:.1f}× realtime"

    def advance(self, n: int, audio_s: float) -> None:
        self._audio_s += audio_s
        self._bar.advance(n, note=self._audio_text())

    def close(self) -> None:
        self._bar.close()


def transcribe_recordings(
    db: Database, store: BlobStore, project: str | None = None, *, progress: bool = False, **params: Any
) -> dict[str, Any]:
    """Transcribe pending recordings; returns the run's stats (also on the job row) with its ``job_id``."""
    stage = TranscribeStage(db, store, TranscribeParams(project=project, **params))
    stats = stage.run(progress=progress)
    stats["job_id"] = stage.job_id
    stats["asr_model"] = stage.model_id
    return stats


def transcribe_stats_table(title: str, stats: dict[str, Any]):  # noqa: ANN201
    """The stage's summary: statuses, failure reasons, flags, audio hours and ×realtime."""
    table = stats_table(title, stats)
    for flag, n in sorted(stats.get("flags", {}).items()):
        table.add_row(f"  flag {flag}", str(n), "")
    table.caption = (
        f"{stats['total']} recordings, {stats.get('audio_hours', 0):.2f} h audio in {stats['elapsed_s']:.1f} s "
        f"({stats.get('x_realtime') or 0:.1f}× realtime)"
    )
    return table
