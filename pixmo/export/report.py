"""Rich tables that summarise an export or a verification (for the CLI and benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pixmo.richtext import plain

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

    from pixmo.export.hf import HFExportResult
    from pixmo.export.verify import VerifyReport
    from pixmo.export.wds import ExportResult


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def export_table(result: ExportResult) -> Table:
    """Per split: shards, samples, bytes; then the rows exported and the speed."""
    from rich.table import Table

    m = result.manifest
    c = m["counts"]
    table = Table(title=f"webdataset export {plain(result.out)} (job {result.job_id})")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_column("detail")
    for split, info in m["splits"].items():
        size = sum(s["bytes"] for s in m["shards"] if s["split"] == split)
        table.add_row(f"[bold]{split}", str(info["samples"]), f"{len(info['shards'])} shards, {_mb(size)}  {info['urls'] or ''}")
    for kind in ("captions", "transcripts", "recordings", "point_sets", "qa", "reviews"):
        table.add_row(f"  {kind}", str(c[kind]), "")
    statuses = ", ".join(f"{k} {v}" for k, v in c["review_status"].items()) or "-"
    table.add_row("  review status", "", statuses)
    if c["audio_files"]:
        table.add_row("  audio files", str(c["audio_files"]), _mb(c["audio_bytes"]))
    if c["reencoded_images"]:
        table.add_row("  re-encoded images", str(c["reencoded_images"]), f"max side {m['options']['max_side']}")
    table.caption = (
        f"{c['samples']} samples, {_mb(c['bytes'])} in {result.elapsed_s:.1f} s "
        f"({result.samples_per_s:,.0f} samples/s, {result.mb_per_s:,.1f} MB/s) · snapshot {result.snapshot_id[:16]}"
    )
    return table


def hf_table(result: HFExportResult) -> Table:
    """The parquet files written and their rows."""
    from rich.table import Table

    table = Table(title=f"PixMo {result.subset} parquet {plain(result.out)} (job {result.job_id})")
    table.add_column("file")
    table.add_column("rows", justify="right")
    table.add_column("size", justify="right")
    for f in result.files:
        table.add_row(plain(f["name"]), str(f["rows"]), _mb(f["bytes"]))
    table.caption = f"{result.rows} rows in {result.elapsed_s:.1f} s"
    return table


def verify_table(report: VerifyReport) -> Table:
    """What was checked and, when something is wrong, every problem (shard, sample, message)."""
    from rich.table import Table

    status = "[green]OK[/green]" if report.ok else f"[red]{len(report.problems)} problem(s)[/red]"
    if report.ok:
        table = Table(title=f"verify {plain(report.out)}: {status}", show_header=False)
        table.add_column("what")
        table.add_column("value")
        table.add_row("snapshot", report.snapshot_id or "")
        table.add_row("shards", str(report.shards))
        table.add_row("samples", str(report.samples))
        table.add_row("bytes", _mb(report.bytes))
        table.add_row("JSON validated with", report.validator)
        return table
    table = Table(title=f"verify {plain(report.out)}: {status}")
    table.add_column("shard")
    table.add_column("sample")
    table.add_column("problem")
    for p in report.problems:
        table.add_row(plain(p.shard or ""), (p.key or "")[:16], plain(p.message))
    table.caption = f"{report.shards} shards, {report.samples} samples checked; JSON validated with {report.validator}"
    return table
