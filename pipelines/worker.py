"""The pipeline worker: transcribe new recordings, then rewrite new transcripts, over and over.

Each round runs the steps in order. A step with nothing pending is skipped without a ``jobs`` row
(an idle worker leaves no trace); a step another run holds now is skipped too ("busy"): the
transcribe and rewrite stages run once at a time per database (`Stage.exclusive`), so several
workers share the steps out instead of doing the same items twice. A step that fails for any
reason (a library error, the database gone for a while) is reported and the round goes on; the
worker itself stops only when told to. Whisper and the LLM stay loaded between rounds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from pipelines.base import Stage, StageBusy
from pipelines.rewrite import STAGES as REWRITE_STAGES
from pipelines.rewrite import RewriteParams, build_backend
from pipelines.transcribe import RecordingTranscriber, TranscribeParams, TranscribeStage
from pixmo.db.models import Project
from pixmo.db.session import Database
from pixmo.errors import PixmoError, ValidationError
from pixmo.llm.backend import LLMBackend
from pixmo.storage import BlobStore

log = logging.getLogger(__name__)

STEPS = ("transcribe", "clean", "merge", "capqa")
DEFAULT_STEPS = ("transcribe", "clean", "merge")


@dataclass
class WorkerOptions:
    """What the worker runs: the steps in order, and the options its stages share."""

    steps: Sequence[str] = DEFAULT_STEPS
    project: str | None = None
    transcribe: dict[str, Any] = field(default_factory=dict)  # more TranscribeParams fields
    rewrite: dict[str, Any] = field(default_factory=dict)  # more RewriteParams fields (task aside)

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown or not self.steps:
            raise ValidationError(f"unknown step(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(STEPS)}")
        for name, given in (("transcribe", self.transcribe), ("rewrite", self.rewrite)):
            once = sorted({"retry_failed", "limit"} & set(given))
            if once:  # every round would delete and redo the failed rows, or stop at the limit, for good
                raise ValidationError(f"{', '.join(once)} is for one run (pixmo {name}), not for every round of a worker")


@dataclass
class StepRun:
    """One step of one round: ``done`` (with its stats), ``idle``, ``busy`` or ``failed`` (with the error)."""

    step: str
    status: str
    stats: dict[str, Any] | None = None
    error: str | None = None


class Worker:
    """Runs the steps of `WorkerOptions` against one database and blob store; `round` once, `run` in a loop."""

    def __init__(self, db: Database, store: BlobStore, options: WorkerOptions | None = None, *,
                 api_key: str | None = None, llm: LLMBackend | None = None):
        self.db, self.store = db, store
        self.options = options or WorkerOptions()
        self.api_key = api_key
        self._llm, self._own_llm = llm, llm is None
        self._transcriber: RecordingTranscriber | None = None
        self._tracebacks_shown: set[tuple[str, str, str]] = set()
        self._deferrals: dict[int, int] = {}  # recording id -> rounds in a row its blob could not be read
        if self.options.project:  # a misspelt project would fail every step of every round
            with db.session() as session:
                if session.scalar(select(Project.id).where(Project.name == self.options.project)) is None:
                    raise ValidationError(f"no project named {self.options.project!r}")

    def _stage(self, step: str) -> Stage:
        o = self.options
        if step == "transcribe":
            return TranscribeStage(self.db, self.store, TranscribeParams(project=o.project, **o.transcribe),
                                   transcriber=self._transcriber, deferrals=self._deferrals)
        params = RewriteParams(task=step, project=o.project, **o.rewrite)
        if self._llm is None:  # one backend for every rewrite step and round: the model loads once
            self._llm = build_backend(params, self.api_key)
        return REWRITE_STAGES[step](self.db, params, llm=self._llm)

    def step(self, step: str) -> StepRun:
        """Run one step now, unless another run holds it or nothing is pending."""
        try:
            stage = self._stage(step)
            if not stage.total():
                return StepRun(step, "idle")
            try:
                stats = stage.run(progress=False)
            finally:
                if isinstance(stage, TranscribeStage):
                    self._transcriber = stage.transcriber  # loaded once, kept for the next rounds
        except StageBusy:
            return StepRun(step, "busy")
        except PixmoError as exc:
            return StepRun(step, "failed", error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a worker outlives what one step runs into
            seen = (step, type(exc).__name__, str(exc))
            if seen not in self._tracebacks_shown:  # once per kind of failure: a database down for an
                self._tracebacks_shown.add(seen)    # hour must not fill the log with the same traceback
                log.exception("pixmo worker: step %s failed", step)
            if not isinstance(exc, SQLAlchemyError):  # the database down is no reason to load the models again
                self._drop_models()  # a model in a bad state (a CUDA error, say) is loaded afresh next time
            return StepRun(step, "failed", error=f"{type(exc).__name__}: {exc}")
        return StepRun(step, "done", {**stats, "job_id": stage.job_id})

    def round(self, report: Callable[[StepRun], None] | None = None) -> list[StepRun]:
        """Each step once, in order."""
        runs = []
        for name in self.options.steps:
            run = self.step(name)
            runs.append(run)
            if report is not None:
                report(run)
        return runs

    def run(self, *, interval: float = 60.0, rounds: int | None = None, report: Callable[[StepRun], None] | None = None,
            sleep: Callable[[float], None] = time.sleep) -> None:
        """Rounds until stopped (or ``rounds`` of them), ``interval`` seconds apart. (Not at once after a
        busy round: items that stay pending, such as recordings whose blobs cannot be read now, would
        make the worker spin.)"""
        done = 0
        try:
            while rounds is None or done < rounds:
                self.round(report)
                done += 1
                if rounds is None or done < rounds:
                    sleep(interval)
        finally:
            self.close()

    def _drop_models(self) -> None:
        self._transcriber = None
        if self._own_llm and self._llm is not None:
            llm, self._llm = self._llm, None
            try:
                llm.close()
            except Exception:  # noqa: BLE001 - a model that fails to close must not stop the worker
                log.warning("pixmo worker: closing the LLM failed", exc_info=True)

    def close(self) -> None:
        self._drop_models()
