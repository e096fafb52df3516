"""`pixmo export webdataset|hf` and `pixmo verify`: thin callers of `pixmo.export`."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

export_app = typer.Typer(help="Export the dataset: webdataset shards or PixMo parquet.", no_args_is_help=True)

OUT_HELP = "A folder, or s3://bucket/prefix."
Projects = Annotated[Optional[list[str]], typer.Option("--project", help="Only images of this project (repeat).")]
Statuses = Annotated[
    Optional[list[str]],
    typer.Option("--review-status", help="Only images with this review status: approved, rejected, pending, flagged (repeat)."),
]
Flags = Annotated[
    Optional[list[str]],
    typer.Option("--exclude-flag", help="Leave out images whose transcripts or captions carry this quality flag (repeat)."),
]
Since = Annotated[Optional[str], typer.Option(help="Only images with activity at or after this ISO date/time.")]
Until = Annotated[Optional[str], typer.Option(help="Snapshot time: ignore everything created at or after it.")]
AllImages = Annotated[bool, typer.Option("--all-images", help="Also export images without any annotation.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")]


def _warn(*messages: str) -> None:
    from pixmo import cli
    from pixmo.richtext import plain

    for message in messages:
        cli.err.print(f"[yellow]warning:[/yellow] {plain(message)}")


def _filters(project, review_status, exclude_flag, since, until, all_images):  # noqa: ANN001, ANN202
    from pixmo.curation.sql import KNOWN_FLAGS
    from pixmo.export import ExportFilters

    filters = ExportFilters(
        projects=tuple(project or ()), review_status=tuple(review_status or ()),
        exclude_flags=tuple(exclude_flag or ()), since=since, until=until, annotated_only=not all_images,
    )
    for flag in filters.exclude_flags:
        if flag not in KNOWN_FLAGS:  # most likely a typo, which would silently exclude nothing
            _warn(f"no toolkit step writes the flag {flag!r} (its flags: {', '.join(KNOWN_FLAGS)}); "
                  "only rows that carry it by hand are left out")
    return filters


@export_app.command("webdataset")
def webdataset_cmd(
    out: Annotated[str, typer.Argument(help=OUT_HELP)],
    project: Projects = None,
    review_status: Statuses = None,
    exclude_flag: Flags = None,
    since: Since = None,
    until: Until = None,
    all_images: AllImages = False,
    maxcount: Annotated[int, typer.Option(help="Most samples per shard.")] = 10_000,
    maxsize: Annotated[str, typer.Option(help="Largest shard (estimated), e.g. 1G, 500M, 3e9.")] = "1G",
    max_side: Annotated[Optional[int], typer.Option(help="Shrink images whose longer side exceeds this (re-encodes).")] = None,
    with_audio: Annotated[bool, typer.Option("--with-audio", help="Add each recording's audio to its sample.")] = False,
    val_fraction: Annotated[float, typer.Option(help="Share of samples in the validation split (stable hash of the key).")] = 0.05,
    workers: Annotated[Optional[int], typer.Option(help="Processes writing shards in parallel (default: CPU count, at most 8).")] = None,
    json_out: JsonOut = False,
) -> None:
    """Write one webdataset sample per image (image, .json record, .txt caption, optional audio) plus manifest.json."""
    from pixmo import cli
    from pixmo.errors import PixmoError
    from pixmo.export import WebDatasetOptions, export_webdataset
    from pixmo.export.report import export_table

    try:
        extra = {"workers": workers} if workers is not None else {}
        options = WebDatasetOptions(maxcount=maxcount, maxsize=maxsize, max_side=max_side, with_audio=with_audio,
                                    val_fraction=val_fraction, **extra)
        result = export_webdataset(
            cli._db(), cli._store(), out, _filters(project, review_status, exclude_flag, since, until, all_images),
            options, progress=not json_out,
        )
    except PixmoError as exc:
        cli._fail(exc)
    if json_out:
        typer.echo(json.dumps({"out": result.out, "stats": result.stats(), "manifest": result.manifest,
                               "warnings": result.warnings}, indent=2))
    else:
        cli.console.print(export_table(result))
    empty = [f"the filters selected no image: {result.out} now holds an empty export"] if result.samples == 0 else []
    _warn(*empty, *result.warnings)


@export_app.command("hf")
def hf_cmd(
    out: Annotated[str, typer.Argument(help=OUT_HELP)],
    subset: Annotated[str, typer.Option(help="cap | points | ama | capqa | point_explanations | count")],
    project: Projects = None,
    review_status: Statuses = None,
    exclude_flag: Flags = None,
    since: Since = None,
    until: Until = None,
    rows_per_file: Annotated[int, typer.Option(help="Most rows per parquet file.")] = 100_000,
    json_out: JsonOut = False,
) -> None:
    """Write parquet files with exactly the columns and types of a released PixMo dataset, under OUT/SUBSET/."""
    from pixmo import cli
    from pixmo.errors import PixmoError
    from pixmo.export import export_hf
    from pixmo.export.report import hf_table

    try:
        result = export_hf(
            cli._db(), cli._store(), out, subset, _filters(project, review_status, exclude_flag, since, until, False),
            rows_per_file=rows_per_file, progress=not json_out,
        )
    except PixmoError as exc:
        cli._fail(exc)
    if json_out:
        typer.echo(json.dumps({"out": result.out, "subset": subset, "files": result.files, "stats": result.stats(),
                               "warnings": result.warnings}, indent=2))
    else:
        cli.console.print(hf_table(result))
    empty = [f"the filters selected no row: {result.out} holds one empty {subset} file"] if result.rows == 0 else []
    _warn(*empty, *result.warnings)


def verify_cmd(
    out: Annotated[str, typer.Argument(help=OUT_HELP)],
    workers: Annotated[int, typer.Option(min=1, help="Shards checked in parallel.")] = 2,
    json_out: JsonOut = False,
) -> None:
    """Check a webdataset export against its manifest: checksums, counts, JSON Schema, images; exit 1 on any problem."""
    from pixmo import cli
    from pixmo.errors import PixmoError
    from pixmo.export import verify_export
    from pixmo.export.report import verify_table

    try:
        report = verify_export(out, workers=workers, progress=not json_out)
    except PixmoError as exc:  # cannot read the export at all (bad URL, no access): not a verdict on it
        cli._fail(exc)
    if json_out:
        typer.echo(json.dumps({
            "out": report.out, "ok": report.ok, "snapshot_id": report.snapshot_id, "validator": report.validator,
            "shards": report.shards, "samples": report.samples, "bytes": report.bytes,
            "bad_shards": report.bad_shards, "problems": [str(p) for p in report.problems],
        }, indent=2))
    else:
        cli.console.print(verify_table(report))
    if not report.ok:
        cli.err.print(f"[red]verify failed[/red]: problems in {', '.join(report.bad_shards) or 'the export'}")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `pixmo export ...` and `pixmo verify` to the CLI."""
    app.add_typer(export_app, name="export")
    app.command("verify")(verify_cmd)
