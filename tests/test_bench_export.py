"""The export benchmarks still run end to end (tiny sizes; their figures are not checked, only that
every row is measured)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_export_bench_and_breakdown_run(tmp_path):
    out = _run("bench/export.py", "--samples", "60", "--maxcount", "20", "--repeat", "1", "--keep", str(tmp_path))
    for row in ("`pixmo export webdataset`", "`tar -cf`", "sha256 of every shard byte", "bare sqlite3 read",
                "plain `tarfile` read", "`pixmo_loader` (bytes", "`pixmo verify`"):
        line = next(line for line in out.splitlines() if row in line)
        assert re.search(r"\| \d+\.\d\d \|", line), line
    table = _run("bench/export_breakdown.py", str(tmp_path), "--shard-size", "20", "--shards", "1", "--repeat", "1")
    parts = re.findall(r"^\| (.+?) \| (\d+) \| (\d+) \|$", table, re.M)
    assert [p[0] for p in parts] == ["bare sqlite3: the same rows", "records.load_rows", "records.build_sample",
                                     "shards.write_shard (samples prebuilt)"]
    assert all(int(p[1]) > 0 for p in parts)
    bare, loaded = re.search(r"bare sqlite3 ([\d,]+), records.load_rows ([\d,]+)", table).groups()
    assert bare == loaded  # the bench's hand-written queries read what the exporter reads
    assert re.search(r"whole-table scans .*: \d+\.\d+ s", table)
