"""Rewrite stages: transcripts → cleaned captions, transcripts of one image → a merged caption,
captions → CapQA pairs, with an LLM.

Each stage reads what has no output yet for this model and prompt version, runs the task in
batches (`pixmo.llm.tasks.run_task`: schema-checked, retried, faithfulness-checked), and writes
rows whose unique constraints make reruns and resumed runs add nothing twice. Every row records
its model, prompt version, sources and job. Identical requests are answered from the
``llm_cache`` table. ``executor="ray"`` spreads each batch over Ray actors (each holding its
own backend: the local model, or a client of an OpenAI-compatible server); the stage is the same.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pixmo.db.models import Caption, Project, QAPair, Recording, Transcript
from pixmo.db.queries import delete_with_reviews, id_chunks, insert_ignore, newest_verdicts
from pixmo.db.session import Database
from pixmo.errors import ValidationError
from pixmo.llm import LLMBackend, get_backend
from pixmo.llm.backend import Completion, Messages, Usage
from pixmo.llm.cache import CachedBackend
from pixmo.llm.errors import LLMError, RequestRefused
from pixmo.llm.prompts import load_prompt
from pixmo.llm.tasks import SPECS, TaskResult, complete_or_refuse, run_task
from pixmo.verdicts import is_usable, unusable_captions
from pipelines.base import Stage, StageStats
from pipelines.ray_pool import RayPool, import_ray

STAGE_TASKS = ("clean", "merge", "capqa")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class RewriteParams:
    """What a rewrite run does; copied into its job row (the API key never is)."""

    task: str
    project: str | None = None
    backend: str = "local"
    model: str | None = None
    base_url: str | None = None
    executor: str = "local"
    limit: int | None = None
    batch_size: int = 8
    max_tokens: int | None = None
    prompt_version: str | None = None
    threshold: float = 0.9
    min_coverage: float = 0.85
    pairs: int = 3
    retries: int = 2
    concurrency: int = 8
    cache: bool = True
    asr_model: str | None = None
    min_transcripts: int = 2
    ray_address: str | None = None
    actors: int | None = None
    retry_failed: bool = False  # delete this model + prompt version's failed rows first, so they are tried again


@dataclass
class WorkItem:
    """One unit of work: the task's inputs and where its output goes."""

    ref: str
    image_id: int
    project_id: int | None
    inputs: dict[str, Any]
    source_ids: list[int] = field(default_factory=list)
    caption_id: int | None = None


@dataclass
class RewriteStats(StageStats):
    """Stage stats plus what the model did: requests, cache hits, tokens."""

    llm: dict[str, Any] = field(default_factory=dict)
    retried: int = 0  # failed rows deleted by retry_failed, so their items were tried again

    def as_dict(self) -> dict[str, Any]:
        return super().as_dict() | {"llm": dict(self.llm), "retried_failed": self.retried}


# -- Ray: the same backend, once per actor ------------------------------------------------------


class BackendActor:
    """A Ray actor holding one backend (so the local model loads once per actor)."""

    def __init__(self, spec: dict[str, Any]):
        self.backend = get_backend(**spec)

    def complete(self, conversations: list[Messages], options: dict[str, Any]) -> list[Completion | RequestRefused]:
        # a refusal comes back as a reply of its own: raised, it would lose this chunk's other
        # replies on the way through Ray (and the other chunks' with it)
        return complete_or_refuse(self.backend, conversations, options)


class RayBackend(LLMBackend):
    """Answer each batch by splitting it over a pool of `BackendActor`s."""

    name = "ray"

    def __init__(self, spec: dict[str, Any], *, actors: int | None = None, cpus_per_actor: float = 1.0,
                 address: str | None = None):
        super().__init__()
        import_ray()  # a missing ray fails before the backend is probed
        probe = get_backend(**spec)  # cheap: no weights are loaded for the id
        self.model_id = probe.model_id
        probe.close()
        if spec.get("name") == "openai":
            spec = {**spec, "model": self.model_id}  # actors need not ask the server again
        self._pool = RayPool(BackendActor, spec, address=address, actors=actors, cpus_per_actor=cpus_per_actor)

    def complete_batch(self, conversations: list[Messages], **options: Any) -> list[Completion]:
        if not conversations:
            return []
        size = math.ceil(len(conversations) / len(self._pool))
        chunks = [conversations[i : i + size] for i in range(0, len(conversations), size)]
        done = [c for part in self._pool.map(lambda a, chunk: a.complete.remote(chunk, options), chunks) for c in part]
        self._count([c for c in done if isinstance(c, Completion)])
        refused = [c for c in done if isinstance(c, RequestRefused)]
        if refused:
            raise RequestRefused(str(refused[0]), done)
        return done

    def close(self) -> None:
        self._pool.close()


def build_backend(params: RewriteParams, api_key: str | None = None) -> LLMBackend:
    """The backend a run uses: local or OpenAI-compatible, on this process or on Ray actors."""
    opts: dict[str, Any] = {"batch_size": params.batch_size} if params.backend == "local" else {
        "concurrency": params.concurrency}
    spec = {"name": params.backend, "model": params.model, "base_url": params.base_url, "api_key": api_key, **opts}
    if params.executor == "local":
        return get_backend(**spec)
    if params.executor == "ray":
        if params.backend == "local":
            spec["threads"] = 1  # one CPU per actor: more threads would only contend
        return RayBackend(spec, actors=params.actors, address=params.ray_address)
    raise ValidationError(f"unknown executor {params.executor!r}; choose one of {', '.join(EXECUTORS)}")


# -- the stages --------------------------------------------------------------------------------


class RewriteStage(Stage[WorkItem, tuple[WorkItem, TaskResult]]):
    """The shared loop of the rewrite stages; subclasses find the work and write the rows."""

    task = "clean"
    exclusive = True

    def __init__(self, db: Database, params: RewriteParams, *, api_key: str | None = None,
                 llm: LLMBackend | None = None):
        if params.task != self.task:
            raise ValidationError(f"{type(self).__name__} runs {self.task!r}, not {params.task!r}")
        if params.batch_size < 1:
            raise ValidationError("batch size must be at least 1")
        if params.pairs < 1:  # 0 pairs wrote nothing and counted as done, so every rerun asked again
            raise ValidationError("pairs must be at least 1")
        super().__init__(db, params)
        self.kind = f"rewrite.{self.task}"
        self.batch_size = params.batch_size
        self.stats = RewriteStats()
        self.prompt = load_prompt(self.task, params.prompt_version)
        self.project_id = self._project_id(params.project)
        self._own_backend = llm is None
        inner = llm or build_backend(params, api_key)
        self.backend: LLMBackend = CachedBackend(inner, db) if params.cache else inner
        self.model_id = self.backend.model_id
        self._items: list[WorkItem] | None = None
        self._answered = False  # whether any request of this run was answered (not refused)

    def _project_id(self, name: str | None) -> int | None:
        if not name:
            return None
        with self.db.session() as session:
            pid = session.scalar(select(Project.id).where(Project.name == name))
        if pid is None:
            raise ValidationError(f"no project named {name!r}")
        return pid

    # -- hooks ------------------------------------------------------------------------------
    def pending(self, session: Session) -> list[WorkItem]:
        raise NotImplementedError

    review_target = "caption"  # what the rows this task writes are as review targets

    def failed_rows(self):  # noqa: ANN201 - a SELECT of ids
        """The ids of this task's failed rows (this model, prompt version and project)."""
        raise NotImplementedError

    def prepare(self) -> None:
        if self.params.retry_failed:
            with self.db.session(write_lock=True) as session:
                ids = list(session.scalars(self.failed_rows()))
                self.stats.retried = delete_with_reviews(session, self.review_target, ids)
            self._items = None  # planned again: the deleted rows' items are pending now

    def items(self) -> list[WorkItem]:
        if self._items is None:
            with self.db.session() as session:
                self._items = self.pending(session)
            if self.params.limit is not None:
                self._items = self._items[: self.params.limit]
        return self._items

    def total(self) -> int:
        return len(self.items())

    def task_options(self) -> dict[str, Any]:
        p = self.params
        return dict(prompt_version=p.prompt_version, max_tokens=p.max_tokens, retries=p.retries,
                    threshold=p.threshold, min_coverage=p.min_coverage)

    def process_batch(self, batch: Sequence[WorkItem]) -> list[tuple[WorkItem, TaskResult]]:
        results = run_task(self.backend, self.task, [w.inputs for w in batch], **self.task_options())
        refused = [r for r in results if _refused(r)]
        if not self._answered and len(refused) == len(results) and not self._probe_answered():
            # the server refuses even a tiny request of this task: it is misconfigured (no structured
            # outputs under --json-mode schema, say), not fed bad prompts, so stop before writing a
            # failed row for each item
            raise LLMError(f"the server refused every request, even a tiny one, so nothing was written: "
                           f"{refused[0].error}")
        self._answered = self._answered or len(refused) < len(results)
        return list(zip(batch, results))

    def _probe_answered(self) -> bool:
        """Whether the server answers a tiny request of this task (same output schema), uncached."""
        backend = getattr(self.backend, "inner", self.backend)
        try:
            backend.complete_batch([[{"role": "user", "content": "Reply with an empty answer."}]], max_tokens=8,
                                   json_schema=SPECS[self.task].json_schema())
        except RequestRefused:
            return False
        self._answered = True
        return True

    def run(self, *, progress: bool = True, pipeline_depth: int = 2) -> dict[str, Any]:
        """Process every pending item; returns the stats (also stored on the job row)."""
        try:
            return super().run(progress=progress, pipeline_depth=pipeline_depth)
        finally:
            if self._own_backend:
                self.backend.close()

    def execute(self, *, progress: bool, pipeline_depth: int) -> dict[str, Any]:  # noqa: D102
        self._t0 = time.perf_counter()
        self._usage0 = replace(self.backend.usage)  # the backend may have served others before
        return super().execute(progress=progress, pipeline_depth=pipeline_depth)

    def complete_stats(self) -> None:
        now, before = self.backend.usage, self._usage0
        usage = Usage(*(getattr(now, f) - getattr(before, f) for f in Usage.__dataclass_fields__))
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self.stats.llm = {
            "backend": self.params.backend, "executor": self.params.executor, "model": self.model_id,
            "prompt_version": self.prompt.version, "prompt_sha256": self.prompt.sha256,
            "requests": usage.requests, "cache_hits": usage.cache_hits,
            "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "completion_tokens_per_s": round(usage.completion_tokens / elapsed, 2),
        }

    def _record(self, w: WorkItem, r: TaskResult, inserted: int = 1) -> None:
        if not inserted:  # another run wrote this item meanwhile: its row stands, this result is dropped
            self.stats.record("exists", None, w.ref)
        elif not r.ok:
            self.stats.record("failed", r.reason or "failed", w.ref)
        elif r.produced_by == "rule":
            self.stats.record("rule", f"llm {r.faithfulness.get('fallback_reason', 'failed')}", w.ref)
        else:
            self.stats.record("llm", ",".join(r.flags) or None, w.ref)


def _refused(r: TaskResult) -> bool:
    """Whether the server refused the request of this item (whatever took its place: a rule caption)."""
    return r.reason == "request_refused" or (r.faithfulness or {}).get("fallback_reason") == "request_refused"


class _CaptionStage(RewriteStage):
    caption_kind = "cleaned"

    def _existing_keys(self, session: Session) -> set[str]:
        return set(session.scalars(select(Caption.source_key).where(
            Caption.kind == self.caption_kind, Caption.model == self.model_id,
            Caption.prompt_version == self.prompt.version)))

    def write(self, session: Session, results: list[tuple[WorkItem, TaskResult]]) -> None:
        for w, r in results:
            row = {
                "image_id": w.image_id, "project_id": w.project_id, "kind": self.caption_kind,
                "status": r.status, "error": r.error, "text": r.text, "model": self.model_id,
                "prompt_version": r.prompt_version, "produced_by": r.produced_by,
                "source_transcript_ids": w.source_ids, "source_key": ",".join(map(str, sorted(w.source_ids))),
                "faithfulness": r.faithfulness or {}, "flags": r.flags, "job_id": self.job_id,
            }
            inserted = insert_ignore(session, Caption, [row], ["image_id", "kind", "model", "prompt_version", "source_key"])
            self._record(w, r, inserted)

    def _usable(self, session: Session) -> list:
        """The transcripts to rewrite, by id: a transcript or recording whose newest verdict is
        rejected or flagged is left out, as the export leaves out what is written from it (a merge
        that took it in would never be used, and block the merge of the others)."""
        newest = newest_verdicts(session, {"transcript": None, "recording": None})
        return [r for r in session.execute(self._transcripts(session)).all()
                if is_usable(newest, "transcript", r.id) and is_usable(newest, "recording", r.recording_id)]

    @staticmethod
    def _texts(session: Session, ids: list[int]) -> dict[int, str]:
        """The texts of these transcripts only: the candidates are listed without them, as most are done."""
        out: dict[int, str] = {}
        for chunk in id_chunks(ids):
            out.update(session.execute(select(Transcript.id, Transcript.text).where(Transcript.id.in_(chunk))).all())
        return out

    def _transcripts(self, session: Session):  # noqa: ANN202
        q = (
            select(Transcript.id, Transcript.recording_id, Recording.image_id, Recording.project_id)
            .join(Recording, Recording.id == Transcript.recording_id)
            .where(Transcript.status == "ok", func.length(func.trim(Transcript.text)) > 0)
            .order_by(Transcript.id)
        )
        if self.project_id is not None:
            q = q.where(Recording.project_id == self.project_id)
        if self.params.asr_model:
            q = q.where(Transcript.asr_model == self.params.asr_model)
        return q

    def failed_rows(self):  # noqa: ANN201
        q = select(Caption.id).where(Caption.kind == self.caption_kind, Caption.model == self.model_id,
                                     Caption.prompt_version == self.prompt.version, Caption.status == "failed")
        return q.where(Caption.project_id == self.project_id) if self.project_id is not None else q


class CleanStage(_CaptionStage):
    """Every transcript without a cleaned caption for this model and prompt version → one."""

    task = "clean"
    caption_kind = "cleaned"

    def pending(self, session: Session) -> list[WorkItem]:
        # the done keys as one set: a NOT EXISTS on source_key = CAST(transcript id) has no index to
        # use, so SQLite scanned the captions once per transcript (4x the time for 2x the rows)
        done = self._existing_keys(session)
        rows = [r for r in self._usable(session) if str(r.id) not in done]
        texts = self._texts(session, [r.id for r in rows])
        return [WorkItem(f"transcript {r.id}", r.image_id, r.project_id, {"transcript": texts[r.id]}, [r.id])
                for r in rows]


class MergeStage(_CaptionStage):
    """Every image with several transcripts (one per recording) → one merged caption, unless one
    exists for exactly those transcripts, this model and prompt version."""

    task = "merge"
    caption_kind = "merged"

    def pending(self, session: Session) -> list[WorkItem]:
        latest: dict[int, tuple] = {}  # one transcript per recording: the newest usable (or of --asr-model)
        for row in self._usable(session):
            latest[row.recording_id] = row
        groups: dict[tuple[int, int | None], list] = defaultdict(list)
        for row in latest.values():
            groups[(row.image_id, row.project_id)].append(row)
        done = self._existing_keys(session)
        todo = []
        for (image_id, project_id), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
            ids = sorted(r.id for r in rows)
            if len(ids) >= self.params.min_transcripts and ",".join(map(str, ids)) not in done:
                todo.append((image_id, project_id, ids))
        texts = self._texts(session, [i for *_, ids in todo for i in ids])
        return [WorkItem(f"image {image_id}", image_id, project_id, {"transcripts": [texts[i] for i in ids]}, ids)
                for image_id, project_id, ids in todo]


class CapQAStage(RewriteStage):
    """Every ok caption without QA pairs for this model and prompt version → up to ``pairs`` pairs."""

    task = "capqa"

    def pending(self, session: Session) -> list[WorkItem]:
        done = (
            select(QAPair.id)
            .where(QAPair.caption_id == Caption.id, QAPair.model == self.model_id,
                   QAPair.prompt_version == self.prompt.version)
            .exists()
        )
        q = (
            select(Caption.id, Caption.text, Caption.image_id, Caption.project_id, Caption.source_transcript_ids)
            .where(Caption.status == "ok", func.length(func.trim(Caption.text)) > 0, ~done)
            .order_by(Caption.id)
        )
        if self.project_id is not None:
            q = q.where(Caption.project_id == self.project_id)
        rows = session.execute(q).all()
        bad = self._unusable(session, rows)
        return [WorkItem(f"caption {cid}", image_id, project_id, {"caption": text, "n": self.params.pairs},
                         caption_id=cid)
                for cid, text, image_id, project_id, _ in rows if cid not in bad]

    @staticmethod
    def _unusable(session: Session, rows: list) -> set[int]:
        """Captions a reviewer rejected or flagged, or written from a transcript or recording that
        was: the export would leave out their pairs, so none are written."""
        sources = sorted({int(i) for row in rows for i in row.source_transcript_ids or []})
        transcripts = []
        for chunk in id_chunks(sources):
            transcripts += [{"id": i, "recording_id": r} for i, r in session.execute(
                select(Transcript.id, Transcript.recording_id).where(Transcript.id.in_(chunk)))]
        verdicts = newest_verdicts(session, {"caption": None, "transcript": None, "recording": None})
        captions = [{"id": row.id, "source_transcript_ids": row.source_transcript_ids} for row in rows]
        return unusable_captions(captions, transcripts, verdicts)

    review_target = "qa_pair"

    def failed_rows(self):  # noqa: ANN201
        q = select(QAPair.id).where(QAPair.source == "capqa", QAPair.model == self.model_id,
                                    QAPair.prompt_version == self.prompt.version, QAPair.status == "failed")
        return q.where(QAPair.project_id == self.project_id) if self.project_id is not None else q

    def write(self, session: Session, results: list[tuple[WorkItem, TaskResult]]) -> None:
        for w, r in results:
            rows = []
            base = {"image_id": w.image_id, "project_id": w.project_id, "caption_id": w.caption_id,
                    "source": "capqa", "model": self.model_id, "prompt_version": r.prompt_version,
                    "job_id": self.job_id}
            if r.ok:
                # accepted, as PixMo-CapQA's pairs were used: a reviewer's reject or flag leaves one out
                rows += [base | {"idx": i, "status": "accepted", "question": qa.question, "answer": qa.answer,
                                 "messages": [qa.question, qa.answer]}
                         for i, qa in enumerate(r.output.pairs)]
            else:
                rows.append(base | {"idx": 0, "status": "failed", "error": r.error, "question": "", "answer": "",
                                    "messages": [], "revisions": [{"raw": r.raw, "attempts": r.attempts}]})
            inserted = insert_ignore(session, QAPair, rows, ["caption_id", "model", "prompt_version", "idx"])
            self._record(w, r, inserted)


STAGES: dict[str, type[RewriteStage]] = {"clean": CleanStage, "merge": MergeStage, "capqa": CapQAStage}


def rewrite(db: Database, task: str, *, api_key: str | None = None, llm: LLMBackend | None = None,
            progress: bool = False, **params: Any) -> dict[str, Any]:
    """Run one rewrite stage (``clean``, ``merge`` or ``capqa``) over everything pending.

    ``params`` are `RewriteParams` fields; ``llm`` (a backend object) overrides the one they describe. Returns
    the run's stats with ``job_id``.
    """
    if task not in STAGES:
        raise ValidationError(f"unknown rewrite task {task!r}; choose one of {', '.join(STAGE_TASKS)}")
    fields = set(RewriteParams.__dataclass_fields__)
    unknown = set(params) - fields
    if unknown:
        raise ValidationError(f"unknown rewrite options: {', '.join(sorted(unknown))}")
    stage = STAGES[task](db, RewriteParams(task=task, **params), api_key=api_key, llm=llm)
    stats = stage.run(progress=progress)
    stats["job_id"] = stage.job_id
    return stats


__all__ = ["CapQAStage", "CleanStage", "MergeStage", "RayBackend", "RewriteParams", "RewriteStage", "rewrite"]
