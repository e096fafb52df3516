"""Benchmark the dashboard's queries at scale against a plain ``SELECT count(*) FROM images``.

    .venv/bin/python bench/dashboard.py [--images 200000] [--postgres URL | --no-postgres]

Seeds a fresh database with N images and their annotations by bulk inserts (a caption project
with every image: assignments, recordings, transcripts with metrics and some flags, captions, CapQA
and reviews; a points project with half of them: point sets, 1 % gold), runs ANALYZE (VACUUM
ANALYZE on PostgreSQL, as autovacuum would after a bulk load), then times
in the same run, on the same database:

  count(*)          SELECT count(*) FROM images (the baseline)
  overview          funnel() for every project + collection_over_time()
  browse page       browse_images(): the first page, a deep page (keyset), and filtered pages
  annotators        annotator_stats() (gold accuracy included)
  quality           the six histograms + flag counts of the Quality page

Each timing is the median of several runs; the ratio is the median over the count(*) median.
Runs on SQLite, and on PostgreSQL too when one answers (default: PIXMO_TEST_POSTGRES_URL or
postgresql+psycopg://postgres@127.0.0.1:5432/test, in a throw-away schema).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console  # noqa: E402
from rich.progress import Progress  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402

from pixmo import curation  # noqa: E402
from pixmo.curation.quality import METRICS  # noqa: E402
from pixmo.db.migrate import upgrade  # noqa: E402
from pixmo.db.models import (  # noqa: E402
    Assignment, Caption, Image, PointSet, Project, ProjectImage, QAPair, Recording, Review, Transcript, User, utcnow,
)
from pixmo.db.session import Database  # noqa: E402

CHUNK = 10_000
ANNOTATORS = 40
DAYS = 60
FLAGS = ("no_speech", "too_short", "low_confidence", "repetition", "wpm_outlier")
WORDS = ("red", "blue", "circle", "square", "cat", "tree", "sky", "window", "person", "car", "table", "lamp", "book")
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"

console = Console(stderr=True)


def _chunks(rows: Iterator[dict], size: int = CHUNK) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(db: Database, n: int, seed_value: int = 0) -> dict[str, int]:
    """Bulk-insert ``n`` images with annotations; returns rows per table."""
    rng = random.Random(seed_value)
    now = utcnow()
    day = lambda i: now - __import__("datetime").timedelta(days=DAYS * (n - i) / n, seconds=rng.random() * 60)  # noqa: E731
    made: dict[str, int] = {}
    with db.session() as s:
        users = [{"id": i, "username": f"ann{i:03d}", "role": "annotator", "is_active": True, "created_at": now}
                 for i in range(1, ANNOTATORS + 1)]
        users.append({"id": ANNOTATORS + 1, "username": "reviewer", "role": "reviewer", "is_active": True, "created_at": now})
        s.execute(insert(User), users)
        s.execute(insert(Project), [
            {"id": 1, "name": "captions", "kind": "caption", "instructions": "", "config": {}, "created_at": now},
            {"id": 2, "name": "points", "kind": "points", "instructions": "", "config": {}, "created_at": now},
        ])
    reviewer = ANNOTATORS + 1
    rec_id = tr_id = cap_id = ps_id = qa_id = rev_id = 0

    def tables(i: int) -> dict[str, list[dict]]:
        nonlocal rec_id, tr_id, cap_id, ps_id, qa_id, rev_id
        out: dict[str, list[dict]] = {k: [] for k in ("images", "project_images", "assignments", "recordings",
                                                     "transcripts", "captions", "point_sets", "qa_pairs", "reviews")}
        t = day(i)
        out["images"].append({"id": i, "sha256": f"{i:064x}", "storage_key": f"sha256/{i:064x}.jpg", "width": 640,
                              "height": 480, "mime": "image/jpeg", "bytes": 50_000 + i % 9000, "source": "bench",
                              "created_at": t})
        out["project_images"].append({"project_id": 1, "image_id": i, "is_gold": False, "created_at": t})
        user = rng.randint(1, ANNOTATORS)
        if rng.random() < 0.92:
            submitted = rng.random() < 0.95
            out["assignments"].append({"id": i, "project_id": 1, "image_id": i, "user_id": user, "is_gold": False,
                                       "status": "submitted" if submitted else "expired", "created_at": t,
                                       "submitted_at": t if submitted else None, "active_seconds": rng.uniform(60, 240)})
            if submitted:
                rec_id += 1
                duration = rng.uniform(40, 110)
                out["recordings"].append({"id": rec_id, "project_id": 1, "image_id": i, "user_id": user, "assignment_id": i,
                                          "storage_key": f"rec/{rec_id}.webm", "sha256": f"{rec_id:064x}", "mime": "audio/webm",
                                          "duration_s": duration, "bytes": int(duration * 4000), "created_at": t})
                if rng.random() < 0.95:
                    tr_id += 1
                    flags = [rng.choice(FLAGS)] if rng.random() < 0.06 else []
                    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(80, 260)))
                    out["transcripts"].append({
                        "id": tr_id, "recording_id": rec_id, "asr_model": "tiny.en", "status": "ok", "text": words,
                        "language": "en", "segments": [], "flags": flags, "created_at": t,
                        "metrics": {"duration_s": duration, "speech_s": duration * rng.uniform(0.7, 0.95),
                                    "wpm": rng.gauss(150, 25), "avg_logprob": rng.uniform(-0.8, -0.1),
                                    "no_speech_prob": rng.random() * 0.2, "compression_ratio": rng.uniform(1.2, 2.4)},
                    })
                    if rng.random() < 0.9:
                        cap_id += 1
                        text_ = " ".join(rng.choice(WORDS) for _ in range(rng.randint(120, 260)))
                        out["captions"].append({
                            "id": cap_id, "image_id": i, "project_id": 1, "kind": "cleaned", "status": "ok", "text": text_,
                            "model": "smollm2", "prompt_version": "v1", "produced_by": "llm",
                            "source_transcript_ids": [tr_id], "source_key": str(tr_id), "created_at": t,
                            "faithfulness": {"score": rng.uniform(0.6, 1.0), "coverage": rng.uniform(0.7, 1.0)},
                            "flags": ["unfaithful"] if rng.random() < 0.03 else [],
                        })
                        if rng.random() < 0.5:
                            qa_id += 1
                            out["qa_pairs"].append({"id": qa_id, "image_id": i, "project_id": 1, "caption_id": cap_id, "idx": 0,
                                                    "source": "capqa", "status": "accepted", "question": "How many?",
                                                    "answer": "Two.", "messages": [], "revisions": [], "points": [],
                                                    "model": "smollm2", "prompt_version": "v1", "created_at": t})
                if rng.random() < 0.35:
                    rev_id += 1
                    roll = rng.random()
                    verdict = "approved" if roll < 0.85 else "rejected" if roll < 0.97 else "flagged"
                    out["reviews"].append({"id": rev_id, "target_type": "recording", "target_id": rec_id, "image_id": i,
                                           "reviewer_id": reviewer, "verdict": verdict,
                                           "reason": "too short" if verdict == "rejected" else "", "created_at": t})
        if i % 2 == 0:
            gold = rng.random() < 0.01
            label = f"{rng.choice(WORDS)} thing"
            points = [[round(rng.random(), 4), round(rng.random(), 4)] for _ in range(rng.randint(1, 5))]
            answer = {"points": {label: points if rng.random() < 0.8 else [[x, min(1.0, y + 0.2)] for x, y in points]}}
            out["project_images"].append({"project_id": 2, "image_id": i, "is_gold": gold,
                                          "gold_answer": answer if gold else None, "created_at": t})
            for extra in range(rng.randint(1, 2)):
                ps_id += 1
                out["point_sets"].append({"id": ps_id, "image_id": i, "project_id": 2, "user_id": rng.randint(1, ANNOTATORS),
                                          "label": label if extra == 0 else f"{label} {extra}", "points": points,
                                          "not_present": False, "method": "pointing", "created_at": t})
        return out

    models = {"images": Image, "project_images": ProjectImage, "assignments": Assignment, "recordings": Recording,
              "transcripts": Transcript, "captions": Caption, "point_sets": PointSet, "qa_pairs": QAPair, "reviews": Review}
    with Progress(console=console, transient=False) as progress:
        task = progress.add_task(f"seeding {n:,} images", total=n)
        for start in range(1, n + 1, CHUNK):
            batch: dict[str, list[dict]] = {k: [] for k in models}
            for i in range(start, min(n, start + CHUNK - 1) + 1):
                for k, rows in tables(i).items():
                    batch[k] += rows
            with db.session() as s:
                for k, model in models.items():  # parents first: the foreign keys are checked
                    if batch[k]:
                        s.execute(insert(model), batch[k])
                        made[k] = made.get(k, 0) + len(batch[k])
            progress.update(task, advance=min(n, start + CHUNK - 1) - start + 1)
    # Planner statistics (and, on PostgreSQL, the visibility map that index-only scans need),
    # as autovacuum would have them on a live server after a bulk load.
    with db.engine.connect() as conn:
        if db.is_sqlite:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()
        else:
            conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
    return made


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(db: Database, n: int, repeat: int) -> list[tuple[str, float]]:
    """(what, median seconds) for the baseline and each dashboard query."""
    deep_after = int(n * 0.75)

    def run(fn: Callable) -> Callable[[], object]:
        def call() -> object:
            with db.session() as s:
                return fn(s)
        return call

    cases: list[tuple[str, Callable]] = [
        ("SELECT count(*) FROM images (baseline)", lambda s: s.scalar(select(func.count()).select_from(Image))),
        ("overview: funnel, all projects", lambda s: curation.funnel(s)),
        ("overview: collection over time", lambda s: curation.collection_over_time(s)),
        ("overview page (both)", lambda s: (curation.funnel(s), curation.collection_over_time(s))),
        ("browse: first page (50)", lambda s: curation.browse_images(s, limit=50)),
        (f"browse: deep page after id {deep_after:,}", lambda s: curation.browse_images(s, after_id=deep_after, limit=50)),
        ("browse: project + status rejected", lambda s: curation.browse_images(
            s, curation.BrowseFilters(project_id=1, status="rejected"), limit=50)),
        ("browse: flag no_speech", lambda s: curation.browse_images(s, curation.BrowseFilters(flag="no_speech"), limit=50)),
        ("browse: annotator ann007", lambda s: curation.browse_images(s, curation.BrowseFilters(annotator_id=7), limit=50)),
        ("browse: caption text 'cat tree sky'", lambda s: curation.browse_images(
            s, curation.BrowseFilters(text="cat tree sky"), limit=50)),
        ("browse: image detail", lambda s: curation.image_detail(s, deep_after)),
        ("annotators page", lambda s: curation.annotator_stats(s)),
        ("quality page (6 histograms + flag counts)", lambda s: (
            [curation.histogram(s, m, bins=20) for m in METRICS if m != "duration_s"], curation.flag_counts(s))),
    ]
    out = []
    for what, fn in cases:
        repeats = repeat * 3 if "baseline" in what else repeat
        run(fn)()  # warm the page cache and the plan
        out.append((what, median_time(run(fn), repeats)))
        console.print(f"  {what}: {out[-1][1] * 1000:.1f} ms")
    return out


def bench_backend(name: str, url: str, n: int, repeat: int) -> tuple[list[tuple[str, float]], dict[str, int], float]:
    console.print(f"[bold]{name}[/bold]: migrating")
    upgrade(url)
    db = Database(url)
    try:
        t0 = time.perf_counter()
        made = seed(db, n)
        seed_s = time.perf_counter() - t0
        console.print(f"seeded {sum(made.values()):,} rows in {seed_s:.1f} s")
        return measure(db, n, repeat), made, seed_s
    finally:
        db.dispose()


def postgres_url(arg: str | None) -> str | None:
    url = arg or os.environ.get("PIXMO_TEST_POSTGRES_URL") or PG_DEFAULT
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return url
    except Exception as exc:  # noqa: BLE001 - an unreachable server just skips the backend
        console.print(f"PostgreSQL not reachable ({type(exc).__name__}); skipping it")
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5, help="runs per query (the median is reported)")
    parser.add_argument("--postgres", help="PostgreSQL URL (default: PIXMO_TEST_POSTGRES_URL or the local test DB)")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()

    results: dict[str, list[tuple[str, float]]] = {}
    rows: dict[str, tuple[dict[str, int], float]] = {}
    with tempfile.TemporaryDirectory(prefix="pixmo-bench-dashboard-") as tmp:
        timings, made, seed_s = bench_backend("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args.images, args.repeat)
        results["SQLite"], rows["SQLite"] = timings, (made, seed_s)
    pg = None if args.no_postgres else postgres_url(args.postgres)
    if pg:
        schema = f"bench_dash_{uuid.uuid4().hex[:8]}"
        admin = create_engine(pg)
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        sep = "&" if "?" in pg else "?"
        try:
            timings, made, seed_s = bench_backend("PostgreSQL", f"{pg}{sep}options=-csearch_path%3D{schema}",
                                                  args.images, args.repeat)
            results["PostgreSQL"], rows["PostgreSQL"] = timings, (made, seed_s)
        finally:
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            admin.dispose()

    made = next(iter(rows.values()))[0]
    print(f"\n## Dashboard queries at {args.images:,} images\n")
    print(f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
          f"{sum(made.values()):,} rows seeded ({', '.join(f'{k} {v:,}' for k, v in made.items())}); "
          f"median of {args.repeat} runs (baseline: {args.repeat * 3}), after ANALYZE (PostgreSQL: VACUUM ANALYZE).\n")
    backends = list(results)
    header = "| query | " + " | ".join(f"{b} ms | {b} × count(*)" for b in backends) + " |"
    print(header)
    print("|" + "---|" * (1 + 2 * len(backends)))
    for i, (what, _) in enumerate(results[backends[0]]):
        cells = []
        for b in backends:
            base = results[b][0][1]
            seconds = results[b][i][1]
            cells += [f"{seconds * 1000:.1f}", f"{seconds / base:.1f}" if base > 0 else "-"]
        print(f"| {what} | " + " | ".join(cells) + " |")
    print("\n" + "; ".join(f"{b}: seeding {rows[b][1]:.0f} s" for b in backends))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
