"""Where the export's time per sample goes: each part timed on its own, one process.

    .venv/bin/python bench/export.py --samples 20000 --keep /tmp/bw      # seeds /tmp/bw and keeps it
    .venv/bin/python bench/export_breakdown.py /tmp/bw [--shards 8] [--repeat 3]

Over full shards (1,000 samples unless ``--shard-size``) of the kept bench database, reports min and median µs per sample of:
the same rows fetched with bare sqlite3 (nothing built), `records.load_rows`, `records.build_sample`,
and `shards.write_shard` with the samples already built (image read + check, tar, hash, fsync).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import export as bench  # noqa: E402
import pixmo.export.records as records  # noqa: E402
import pixmo.export.shards as shards  # noqa: E402
from pixmo.db.session import Database  # noqa: E402
from pixmo.export import WebDatasetOptions  # noqa: E402
from pixmo.export.options import ExportFilters  # noqa: E402
from pixmo.export.select import select_images  # noqa: E402
from pixmo.export.target import open_target  # noqa: E402
from pixmo.storage import LocalStore  # noqa: E402


# the row lists of records.ImageRows (besides the image row itself)
ROW_LISTS = ("projects", *records.ROW_KINDS)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", type=Path, help="a folder kept by bench/export.py --keep")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard (full shards only)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    path = args.work / "bench.db"
    db = Database(f"sqlite:///{path}")
    store = LocalStore(args.work / "blobs", secret="bench-secret", public_url="http://127.0.0.1:8000")
    size = args.shard_size
    options = WebDatasetOptions(maxcount=size, workers=1, val_fraction=0.05)
    as_of = dt.datetime.now(dt.timezone.utc)
    with db.session() as session:
        candidates = select_images(session, ExportFilters(), as_of=as_of)
        usernames = records.load_usernames(session)
    plans = [p for p in shards.plan_shards(candidates, maxcount=size, maxsize=10**12, val_fraction=0.05)
             if p.samples == size][: args.shards]
    if not plans:
        parser.error(f"no full shard of {size} samples in {path}")
    con = sqlite3.connect(path)
    queries = bench._bare_queries(as_of.strftime("%Y-%m-%d %H:%M:%S.%f"))
    times: dict[str, list[float]] = {"bare sqlite3: the same rows": [], "records.load_rows": [],
                                     "records.build_sample": [], "shards.write_shard (samples prebuilt)": []}
    counts = {"bare": 0, "load_rows": 0}
    built = {}
    shards.build_samples = lambda session, ids, **kw: built[ids]  # write_shard writes what was built here
    out = tempfile.TemporaryDirectory(prefix="pixmo-breakdown-")
    target = open_target(out.name)
    for _ in range(args.repeat):
        for plan in plans:
            ids = list(plan.image_ids)
            start = time.perf_counter()
            counts["bare"] = bench.fetch_bare(con, ids, queries)
            times["bare sqlite3: the same rows"].append(time.perf_counter() - start)
            with db.session() as session, records.gc_paused():
                start = time.perf_counter()
                rows = records.load_rows(session, plan.image_ids, as_of)
                loaded = time.perf_counter()
                samples = [records.build_sample(r, usernames, val_fraction=0.05, with_audio=False) for r in rows.values()]
                times["records.load_rows"].append(loaded - start)
                counts["load_rows"] = sum(1 + sum(len(getattr(r, kind)) for kind in ROW_LISTS) for r in rows.values())
                times["records.build_sample"].append(time.perf_counter() - loaded)
            built[plan.image_ids] = sorted(samples, key=lambda s: s.key)
            start = time.perf_counter()
            shards.write_shard(plan, db=db, store=store, target=target, options=options, as_of=as_of, usernames=usernames)
            times["shards.write_shard (samples prebuilt)"].append(time.perf_counter() - start)
    out.cleanup()
    scans = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        for q in bench.scan_queries(as_of.strftime("%Y-%m-%d %H:%M:%S.%f")):
            con.execute(q).fetchall()
        scans.append(time.perf_counter() - start)
    print(f"per sample, one process, {len(plans)} shards of {size:,} x {args.repeat}\n")
    print("| part | min µs | median µs |\n| --- | ---: | ---: |")
    for name, values in times.items():
        values.sort()
        print(f"| {name} | {values[0] / size * 1e6:.0f} | {values[len(values) // 2] / size * 1e6:.0f} |")
    scans.sort()
    print(f"\nrows of the last shard: bare sqlite3 {counts['bare']:,}, records.load_rows {counts['load_rows']:,}")
    print(f"whole-table scans of every exported row, no lookup by image: {scans[0]:.3f} s (min), "
          f"{scans[0] / len(candidates) * 1e6:.0f} µs per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
