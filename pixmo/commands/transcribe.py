"""`pixmo transcribe`: Whisper over every recording (a resumable stage), or over files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from pixmo.errors import PixmoError

transcribe_app = typer.Typer(
    help="Transcribe recordings with Whisper (faster-whisper or openai-whisper).",
    invoke_without_command=True,
)

Backend = Annotated[str, typer.Option(help="faster-whisper | openai-whisper")]
Model = Annotated[Optional[str], typer.Option(
    help="faster-whisper: a CTranslate2 folder or model name (default: bundled tiny.en); "
         "openai-whisper: a model name or a .pt checkpoint.")]
Device = Annotated[str, typer.Option(help="cpu | cuda")]
ComputeType = Annotated[Optional[str], typer.Option(
    help="faster-whisper: int8, float16, ... (default: int8 on CPU, float16 on CUDA).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Recordings per batch; their speech windows are decoded together.")]
BeamSize = Annotated[int, typer.Option(min=1, help="Beam size (1: greedy).")]
Language = Annotated[Optional[str], typer.Option(
    help="Pin the language (default: the project's; detected without one).")]
Workers = Annotated[Optional[int], typer.Option(min=1,
    help="faster-whisper: model workers decoding in parallel (CPU default: one per core, at most 4).")]
DownloadRoot = Annotated[Optional[str], typer.Option(help="Where model downloads are kept.")]



@transcribe_app.callback()
def transcribe(
    ctx: typer.Context,
    project: Annotated[Optional[str], typer.Option(help="Only this project's recordings.")] = None,
    backend: Backend = "faster-whisper",
    model: Model = None,
    device: Device = "cpu",
    compute_type: ComputeType = None,
    batch_size: BatchSize = 8,
    beam_size: BeamSize = 5,
    language: Language = None,
    workers: Workers = None,
    executor: Annotated[str, typer.Option(help="local | ray")] = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: a local Ray).")] = None,
    actors: Annotated[Optional[int], typer.Option(min=1, help="Ray: model replicas (default: one per CPU).")] = None,
    limit: Annotated[Optional[int], typer.Option(min=0, help="At most this many recordings.")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Try recordings that failed with this model again.")] = False,
    download_root: DownloadRoot = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")] = False,
) -> None:
    """Transcribe every recording that has no transcript for this model yet (resumable; a jobs row)."""
    if ctx.invoked_subcommand is not None:
        return
    from pipelines.transcribe import transcribe_recordings, transcribe_stats_table
    from pixmo.cli import _db, _fail, _store, console, err

    try:
        stats = transcribe_recordings(
            _db(), _store(), project, progress=not json_out, backend=backend, model=model, device=device,
            compute_type=compute_type, batch_size=batch_size, beam_size=beam_size, language=language,
            num_workers=workers, executor=executor, ray_address=ray_address, actors=actors, limit=limit,
            retry_failed=retry_failed,
            download_root=download_root,
        )
    except PixmoError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(stats, indent=2))
    else:
        console.print(transcribe_stats_table(f"transcribe {stats['asr_model']} (job {stats['job_id']})", stats))
    if stats.get("other_language"):
        err.print(f"[yellow]warning:[/yellow] {stats['other_language']} recording(s) of projects in other languages "
                  f"were left for a multilingual model: {stats['asr_model']} is English-only (--model)")


@transcribe_app.command("files")
def transcribe_files_cmd(
    audio: Annotated[list[Path], typer.Argument(help="Audio files (webm, ogg, wav, flac, mp3, m4a).")],
    backend: Backend = "faster-whisper",
    model: Model = None,
    device: Device = "cpu",
    compute_type: ComputeType = None,
    batch_size: BatchSize = 8,
    beam_size: BeamSize = 5,
    language: Language = None,
    workers: Workers = None,
    download_root: DownloadRoot = None,
) -> None:
    """Transcribe files without the database: one JSON line per file (text, language, duration, metrics)."""
    from pixmo.asr.files import transcribe_files
    from pixmo.cli import _fail

    failed = 0
    try:
        for record in transcribe_files(
            audio, language=language, batch_size=batch_size, backend=backend, model=model, device=device,
            compute_type=compute_type, beam_size=beam_size, num_workers=workers, download_root=download_root,
        ):
            failed += record["status"] == "failed"
            typer.echo(json.dumps(record, ensure_ascii=False))
    except PixmoError as exc:
        _fail(exc)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(transcribe_app, name="transcribe")
