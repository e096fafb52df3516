"""`pixmo rewrite` (transcripts → captions → QA with an LLM) and `pixmo llm` (serve, prompts)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

import typer

from pixmo.errors import PixmoError

rewrite_app = typer.Typer(help="Rewrite with an LLM: clean and merge transcripts into captions, write CapQA.",
                          no_args_is_help=True)
llm_app = typer.Typer(help="The LLM layer: serve the local model over an OpenAI-compatible API, list prompts.",
                      no_args_is_help=True)

Project = Annotated[Optional[str], typer.Option(help="Only this project's transcripts / captions.")]
Backend = Annotated[str, typer.Option(help="local (bundled SmolLM2, offline) | openai (any OpenAI-compatible server)")]
Model = Annotated[Optional[str], typer.Option(
    help="local: a .gguf file or model folder (default: bundled SmolLM2-135M); openai: the model name "
         "(default: the server's first).")]
BaseUrl = Annotated[Optional[str], typer.Option(help="openai: server URL, e.g. http://127.0.0.1:8001/v1 (default: $OPENAI_BASE_URL).")]
ApiKey = Annotated[Optional[str], typer.Option(help="openai: API key (default: $OPENAI_API_KEY); never stored.")]
Executor = Annotated[str, typer.Option(help="local | ray")]
RayAddress = Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local Ray).")]
Actors = Annotated[Optional[int], typer.Option(help="Ray: backend replicas (default: one per CPU).")]
Limit = Annotated[Optional[int], typer.Option(help="At most this many items.")]
BatchSize = Annotated[int, typer.Option(help="Items per batch (local: generated together).")]
MaxTokens = Annotated[Optional[int], typer.Option(min=1, help="Longest reply (default: the prompt file's).")]
PromptVersion = Annotated[Optional[str], typer.Option(help="Prompt version, e.g. v1 (default: the newest), or a .toml file.")]
Concurrency = Annotated[int, typer.Option(min=1, help="openai: requests in flight.")]
Threshold = Annotated[float, typer.Option(min=0.0, max=1.0, help="Faithfulness: least share of caption content the transcripts support.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the stats as JSON.")]
Cache = Annotated[bool, typer.Option(help="Answer identical requests from the llm_cache table.")]
RetryFailed = Annotated[bool, typer.Option(
    help="Delete this model + prompt version's failed rows first, so they are tried again.")]



def _run(task: str, json_out: bool, api_key: str | None, **params: Any) -> None:
    from pipelines.base import stats_table
    from pipelines.rewrite import rewrite
    from pixmo.cli import _db, _fail, console

    try:
        stats = rewrite(_db(), task, api_key=api_key, progress=not json_out, **params)
    except PixmoError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(stats, indent=2))
        return
    llm = stats["llm"]
    table = stats_table(f"rewrite {task} (job {stats['job_id']})", stats)
    table.caption += (f" · {llm['model']} {llm['prompt_version']} · {llm['requests']} requests, "
                      f"{llm['cache_hits']} cached, {llm['completion_tokens_per_s']} tokens/s")
    console.print(table)


@rewrite_app.command("clean")
def clean_cmd(
    project: Project = None, backend: Backend = "local", model: Model = None, base_url: BaseUrl = None,
    api_key: ApiKey = None, executor: Executor = "local", ray_address: RayAddress = None, actors: Actors = None,
    limit: Limit = None, batch_size: BatchSize = 8,
    max_tokens: MaxTokens = None, prompt_version: PromptVersion = None, concurrency: Concurrency = 8,
    threshold: Threshold = 0.9,
    asr_model: Annotated[Optional[str], typer.Option(help="Only transcripts of this ASR model.")] = None,
    cache: Cache = True, retry_failed: RetryFailed = False, json_out: JsonOut = False,
) -> None:
    """Clean every transcript without a caption for this model + prompt version into a written caption."""
    _run("clean", json_out, api_key, project=project, backend=backend, model=model, base_url=base_url,
         executor=executor, ray_address=ray_address, actors=actors, limit=limit, batch_size=batch_size, max_tokens=max_tokens,
         prompt_version=prompt_version, concurrency=concurrency, threshold=threshold, asr_model=asr_model,
         cache=cache, retry_failed=retry_failed)


@rewrite_app.command("merge")
def merge_cmd(
    project: Project = None, backend: Backend = "local", model: Model = None, base_url: BaseUrl = None,
    api_key: ApiKey = None, executor: Executor = "local", ray_address: RayAddress = None, actors: Actors = None,
    limit: Limit = None, batch_size: BatchSize = 8,
    max_tokens: MaxTokens = None, prompt_version: PromptVersion = None, concurrency: Concurrency = 8,
    threshold: Threshold = 0.9,
    min_transcripts: Annotated[int, typer.Option(help="Merge images with at least this many transcripts.")] = 2,
    asr_model: Annotated[Optional[str], typer.Option(help="Only transcripts of this ASR model.")] = None,
    cache: Cache = True, retry_failed: RetryFailed = False, json_out: JsonOut = False,
) -> None:
    """Merge the transcripts of each image into one caption (flagged when unfaithful)."""
    _run("merge", json_out, api_key, project=project, backend=backend, model=model, base_url=base_url,
         executor=executor, ray_address=ray_address, actors=actors, limit=limit, batch_size=batch_size, max_tokens=max_tokens,
         prompt_version=prompt_version, concurrency=concurrency, threshold=threshold,
         min_transcripts=min_transcripts, asr_model=asr_model, cache=cache, retry_failed=retry_failed)


@rewrite_app.command("capqa")
def capqa_cmd(
    project: Project = None, backend: Backend = "local", model: Model = None, base_url: BaseUrl = None,
    api_key: ApiKey = None, executor: Executor = "local", ray_address: RayAddress = None, actors: Actors = None,
    limit: Limit = None, batch_size: BatchSize = 8,
    max_tokens: MaxTokens = None, prompt_version: PromptVersion = None, concurrency: Concurrency = 8,
    pairs: Annotated[int, typer.Option(help="Question/answer pairs per caption.")] = 3,
    cache: Cache = True, retry_failed: RetryFailed = False, json_out: JsonOut = False,
) -> None:
    """Write question/answer pairs from every caption that has none for this model + prompt version."""
    _run("capqa", json_out, api_key, project=project, backend=backend, model=model, base_url=base_url,
         executor=executor, ray_address=ray_address, actors=actors, limit=limit, batch_size=batch_size, max_tokens=max_tokens,
         prompt_version=prompt_version, concurrency=concurrency, pairs=pairs, cache=cache, retry_failed=retry_failed)


@rewrite_app.command("text")
def text_cmd(
    texts: Annotated[list[str], typer.Argument(
        help="clean: a transcript; merge: several transcripts; capqa/ask/revise: a caption.")] = None,
    task: Annotated[str, typer.Option(help="clean | merge | capqa | ask | revise | point_explain")] = "clean",
    question: Annotated[Optional[str], typer.Option(help="ask / revise / point_explain: the question.")] = None,
    ocr: Annotated[Optional[str], typer.Option(help="ask / revise: text in the image.")] = None,
    previous: Annotated[Optional[str], typer.Option(help="revise: the previous answer.")] = None,
    feedback: Annotated[Optional[str], typer.Option(help="revise: what is wrong with it.")] = None,
    points: Annotated[Optional[str], typer.Option(
        help='point_explain: JSON [{"label": "cat", "points": [[0.4, 0.5]]}] (normalised 0-1).')] = None,
    pairs: Annotated[int, typer.Option(help="capqa: pairs to write.")] = 3,
    backend: Backend = "local", model: Model = None, base_url: BaseUrl = None, api_key: ApiKey = None,
    max_tokens: MaxTokens = None, prompt_version: PromptVersion = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
) -> None:
    """Run one task on text given on the command line and print the result."""
    from pixmo.cli import _fail
    from pixmo.llm import get_backend
    from pixmo.llm.tasks import run_text

    try:
        labelled = json.loads(points) if points else None
        result = run_text(get_backend(backend, model, base_url, api_key), task, texts or [], question=question,
                          ocr_text=ocr, previous_answer=previous, feedback=feedback, labelled_points=labelled,
                          n=pairs, max_tokens=max_tokens, prompt_version=prompt_version)
    except json.JSONDecodeError as exc:
        _fail(ValueError(f"--points is not JSON: {exc}"))
    except PixmoError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
        if not result.ok:
            raise typer.Exit(1)  # as without --json: scripts see the failure in the status too
        return
    typer.echo(result.text if result.ok else f"failed: {result.error}")
    from pixmo.cli import err

    err.print(f"[dim]{result.model_id} {result.prompt_version} · produced by {result.produced_by}"
              f"{' · flags: ' + ', '.join(result.flags) if result.flags else ''}[/dim]")
    if not result.ok:
        raise typer.Exit(1)


@llm_app.command("serve")
def serve_cmd(
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port.")] = 8001,
    model: Annotated[Optional[str], typer.Option(help="A .gguf file or model folder (default: bundled SmolLM2-135M).")] = None,
    max_batch: Annotated[int, typer.Option(help="Concurrent requests generated together.")] = 8,
    api_key: Annotated[Optional[str], typer.Option(help="Require this Bearer token.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="Torch CPU threads (default: half the cores).")] = None,
) -> None:
    """Serve the local model as an OpenAI-compatible /v1/chat/completions endpoint."""
    from pixmo.cli import _fail, err
    from pixmo.llm.server import serve

    err.print(f"serving the local model on http://{host}:{port}/v1 (Ctrl-C stops)")
    try:
        serve(host, port, model=model, max_batch=max_batch, api_key=api_key, threads=threads)
    except PixmoError as exc:
        _fail(exc)


@llm_app.command("prompts")
def prompts_cmd() -> None:
    """List the tasks and their prompt versions."""
    from rich.table import Table

    from pixmo.cli import console
    from pixmo.llm.prompts import list_prompts, load_prompt

    table = Table("task", "versions", "newest", "max tokens")
    for task, versions in list_prompts().items():
        p = load_prompt(task)
        table.add_row(task, ", ".join(f"v{v}" for v in versions), p.version, str(p.max_tokens))
    console.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(rewrite_app, name="rewrite")
    app.add_typer(llm_app, name="llm")
