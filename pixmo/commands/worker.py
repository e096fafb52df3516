"""`pixmo worker`: transcribe and rewrite whatever is new, every minute (or once)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    app.command()(worker)


def worker(
    steps: Annotated[str, typer.Option(help="Steps in order, comma-separated: transcribe, clean, merge, capqa.")] = (
        "transcribe,clean,merge"),
    interval: Annotated[float, typer.Option(help="Seconds between rounds.", min=1)] = 60.0,
    once: Annotated[bool, typer.Option("--once", help="One round, then exit (1 if a step failed).")] = False,
    project: Annotated[Optional[str], typer.Option(help="Only this project's recordings and transcripts.")] = None,
    asr_backend: Annotated[str, typer.Option(help="faster-whisper | openai-whisper")] = "faster-whisper",
    asr_model: Annotated[Optional[str], typer.Option(help="Whisper model (default: bundled tiny.en).")] = None,
    device: Annotated[str, typer.Option(help="Whisper device: cpu | cuda")] = "cpu",
    llm_backend: Annotated[str, typer.Option(help="local (bundled SmolLM2) | openai (OpenAI-compatible server)")] = "local",
    llm_model: Annotated[Optional[str], typer.Option(help="LLM model (default: bundled SmolLM2 / the server's first).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="openai: server URL (default: $OPENAI_BASE_URL).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="openai: API key (default: $OPENAI_API_KEY); never stored.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="One JSON line per step run.")] = False,
) -> None:
    """Transcribe and rewrite whatever is new, every minute (or --once).

    A step with nothing new records no job; a step another worker is running is left to it, so
    several workers share the steps out."""
    from pipelines.worker import StepRun, Worker, WorkerOptions
    from pixmo.cli import _db, _fail, _store, console
    from pixmo.richtext import plain
    from pixmo.errors import PixmoError

    try:
        options = WorkerOptions(
            steps=tuple(s.strip() for s in steps.split(",") if s.strip()), project=project,
            transcribe={"backend": asr_backend, "model": asr_model, "device": device},
            rewrite={"backend": llm_backend, "model": llm_model, "base_url": base_url},
        )
        w = Worker(_db(), _store(), options, api_key=api_key)
    except PixmoError as exc:
        _fail(exc)
    failed = []

    def report(run: StepRun) -> None:
        if run.status == "failed":
            failed.append(run)
        if json_out:
            typer.echo(json.dumps({"step": run.step, "status": run.status, "error": run.error, "stats": run.stats}))
            return
        when = dt.datetime.now().strftime("%H:%M:%S")
        if run.status == "done":
            s = run.stats
            counts = ", ".join(f"{n} {status}" for status, n in sorted(s["statuses"].items())) or "nothing"
            console.print(f"{when} {run.step}: job {s['job_id']}: {counts} of {s['total']} in {s['elapsed_s']:.1f} s")
        elif run.status == "failed":
            console.print(f"{when} {run.step}: [red]failed[/red]: {plain(run.error)}")
        elif run.status == "busy":
            console.print(f"{when} {run.step}: another worker is running it")

    if not json_out:
        console.print(f"worker: {', '.join(options.steps)}" + (" once" if once else f" every {interval:g} s (Ctrl-C stops)"))
    w.run(interval=interval, rounds=1 if once else None, report=report)
    if once and failed:
        raise typer.Exit(1)
