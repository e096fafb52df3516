"""Benchmark `pixmo export webdataset` against `tar -cf`, and the training loader against `tarfile`.

    .venv/bin/python bench/export.py [--samples 20000] [--workers 2] [--maxcount 1000]

Seeds a fresh SQLite database and local blob store with N demo-like samples (demo images made
unique, bulk-inserted recordings, transcripts, captions, point sets, QA and reviews; no espeak),
then times, in the same run:
  export:   export_webdataset (select, build + validate every record, read and hash every
            image, write tar shards in a process pool, manifest)
  tar -cf:  GNU tar of the very same image, JSON and text files (extracted from the shards) into
            one archive
  sha256:   hashing every shard once in a pool of the same size: the part of the export that the
            manifest's checksums alone cost (tar -cf hashes nothing)
  rows:     the same database rows the export reads (same tables, columns and filters, 900 ids per
            query), fetched with bare sqlite3 in a pool of the same size and nothing built from them:
            the floor the database alone puts under any exporter written in Python
  loader:   pixmo.data.pixmo_loader over the shards (decode images to tensors + Molmo targets),
            also with decode="bytes" (the webdataset pipeline alone)
  tarfile:  a plain `tarfile` loop reading every member of the same shards
and prints a Markdown table with MB/s, samples/s and the ratios (export / tar, loader / tarfile).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from pixmo.db.migrate import upgrade  # noqa: E402
from pixmo.db.models import (  # noqa: E402
    Caption,
    Image,
    PointSet,
    Project,
    ProjectImage,
    QAPair,
    Recording,
    Review,
    Transcript,
    User,
)
from pixmo.db.session import Database  # noqa: E402
from pixmo.demo import NUMBER_WORDS, demo_images, spoken_transcript  # noqa: E402
from pixmo.export import WebDatasetOptions, export_webdataset, verify_export  # noqa: E402
from pixmo.storage import LocalStore, content_key  # noqa: E402

BASE_IMAGES = 300


def unique_bytes(data: bytes, ext: str, n: int) -> bytes:
    """The same picture with a distinct comment (JPEG COM segment / PNG tEXt chunk): a new sha256."""
    text = f"pixmo-bench {n}".encode()
    if ext == "jpg":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(text) + 2) + text + data[2:]
    chunk = b"tEXt" + b"Comment\x00" + text
    ihdr_end = 8 + 25
    return data[:ihdr_end] + struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[ihdr_end:]


def seed(db: Database, store: LocalStore, n: int, rng: random.Random) -> int:
    """Bulk-insert n demo-like samples; returns the image bytes written."""
    from PIL import Image as PILImage
    import io

    base = demo_images(BASE_IMAGES, seed=1)
    sizes = []
    for im in base:
        with PILImage.open(io.BytesIO(im.data)) as pil:
            sizes.append(pil.size)
    users = [{"id": i + 1, "username": u, "role": r} for i, (u, r) in enumerate(
        [("ann1", "annotator"), ("ann2", "annotator"), ("ann3", "annotator"), ("rev", "reviewer")])]
    projects = [{"id": 1, "name": "bench-captions", "kind": "caption", "config": {}},
                {"id": 2, "name": "bench-points", "kind": "points", "config": {}}]
    images, links, recs, trs, caps, sets, qas, reviews = [], [], [], [], [], [], [], []
    total = 0
    for i in range(n):
        b = base[i % len(base)]
        data = unique_bytes(b.data, b.ext, i)
        sha = hashlib.sha256(data).hexdigest()
        key = content_key(sha, b.ext)
        path = store.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        image_id = i + 1
        w, h = sizes[i % len(base)]
        images.append({"id": image_id, "sha256": sha, "storage_key": key, "width": w, "height": h,
                       "mime": "image/jpeg" if b.ext == "jpg" else "image/png", "bytes": len(data), "source": "bench"})
        links += [{"project_id": 1, "image_id": image_id}, {"project_id": 2, "image_id": image_id}]
        tids = []
        for _ in range(2 if rng.random() < 0.6 else 1):
            rid, tid = len(recs) + 1, len(trs) + 1
            text = spoken_transcript(b.caption, rng)
            dur = rng.uniform(40, 90)
            recs.append({"id": rid, "project_id": 1, "image_id": image_id, "user_id": rng.randint(1, 3),
                         "storage_key": content_key(hashlib.sha256(f"a{rid}".encode()).hexdigest(), "ogg"),
                         "sha256": hashlib.sha256(f"a{rid}".encode()).hexdigest(), "mime": "audio/ogg",
                         "duration_s": round(dur, 2), "bytes": int(dur * 4000)})
            trs.append({"id": tid, "recording_id": rid, "asr_model": "faster-whisper/tiny.en", "text": text,
                        "language": "en", "segments": [], "flags": [],
                        "metrics": {"duration_s": round(dur, 2), "wpm": 130.0, "avg_logprob": -0.3}})
            tids.append(tid)
            if rng.random() < 0.7:
                reviews.append({"target_type": "recording", "target_id": rid, "image_id": image_id, "reviewer_id": 4,
                                "verdict": "approved", "reason": ""})
        cid = len(caps) + 1
        caps.append({"id": cid, "image_id": image_id, "project_id": 1, "kind": "cleaned", "text": b.caption,
                     "model": "smollm2-135m", "prompt_version": "clean-v1", "produced_by": "llm",
                     "source_transcript_ids": tids[:1], "source_key": str(tids[0]), "faithfulness": {}, "flags": []})
        if len(tids) > 1:
            caps.append({"id": cid + 1, "image_id": image_id, "project_id": 1, "kind": "merged", "text": b.caption,
                         "model": "smollm2-135m", "prompt_version": "merge-v1", "produced_by": "llm",
                         "source_transcript_ids": tids, "source_key": ",".join(map(str, tids)), "faithfulness": {},
                         "flags": []})
        for j, (label, pts) in enumerate(b.points.items()):
            sets.append({"image_id": image_id, "project_id": 2, "user_id": rng.randint(1, 3), "label": label,
                         "points": [list(p) for p in pts], "method": "counting" if len(pts) > 1 else "pointing"})
            qas.append({"image_id": image_id, "project_id": 1, "caption_id": cid, "idx": j, "source": "capqa",
                        "status": "accepted", "question": f"How many {label}s are there?",
                        "answer": f"There are {NUMBER_WORDS[min(len(pts), 9)]}.", "model": "smollm2-135m",
                        "prompt_version": "capqa-v1"})
        for label in b.absent:
            sets.append({"image_id": image_id, "project_id": 2, "label": label, "points": [], "not_present": True,
                         "method": "pointing"})
    with db.session() as s:
        for model, rows in [(User, users), (Project, projects), (Image, images), (ProjectImage, links),
                            (Recording, recs), (Transcript, trs), (Caption, caps), (PointSet, sets), (QAPair, qas),
                            (Review, reviews)]:
            for k in range(0, len(rows), 5000):
                s.execute(insert(model), rows[k : k + 5000])
    return total


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def tarfile_read(shards: list[Path]) -> int:
    members = 0
    for shard in shards:
        with tarfile.open(shard, mode="r|") as tar:
            for info in tar:
                tar.extractfile(info).read()
                members += 1
    return members


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def hash_shards(shards: list[Path], workers: int) -> int:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        return len(list(pool.map(_sha256_file, shards)))


def _bare_queries(as_of: str) -> list[str]:
    """The export's row queries (records._load_chunk) as plain SQL with a ``{ids}`` slot.

    Written out by hand: keep in step with `_load_chunk` (tests/test_bench_export.py checks that
    both read the same number of rows)."""
    from pixmo.export.records import _COLUMNS

    def cols(table: str, alias: str = "") -> str:
        return ", ".join(f"{alias}{c}" for c in _COLUMNS[table])

    before = f"created_at < '{as_of}'"
    queries = [f"SELECT {cols('images')} FROM images WHERE id IN ({{ids}})",
               "SELECT pi.image_id, p.name FROM project_images pi JOIN projects p ON p.id = pi.project_id "
               f"WHERE pi.image_id IN ({{ids}}) AND pi.{before}"]
    extra = {"captions": " AND status = 'ok'", "qa_pairs": " AND status != 'failed'"}
    for table in ("captions", "recordings", "point_sets", "qa_pairs", "reviews"):
        queries.append(f"SELECT {cols(table)} FROM {table} WHERE image_id IN ({{ids}}) AND {before}"
                       f"{extra.get(table, '')} ORDER BY id")
    queries.append(f"SELECT {cols('transcripts', 't.')}, r.image_id, r.duration_s FROM transcripts t "
                   f"JOIN recordings r ON r.id = t.recording_id WHERE r.image_id IN ({{ids}}) AND t.status = 'ok' "
                   f"AND t.{before} ORDER BY t.id")
    return queries


def scan_queries(as_of: str) -> list[str]:
    """`_bare_queries` as whole-table scans: no lookup by image, no ORDER BY."""
    out = []
    for q in _bare_queries(as_of):
        q = q.replace(" WHERE id IN ({ids})", "").replace(" ORDER BY t.id", "").replace(" ORDER BY id", "")
        q = re.sub(r"(\w+\.)?image_id IN \(\{ids\}\) AND ", "", q)
        out.append(re.sub(r"((\w+\.)?created_at <)", r"+\1", q))  # '+': a scan, not the created_at index
    return out


def fetch_bare(con, ids: list[int], queries: list[str]) -> int:  # noqa: ANN001 - a sqlite3 connection
    """Run the bare row queries for ``ids``, ``ID_CHUNK`` ids at a time; returns the rows fetched."""
    from pixmo.db.queries import ID_CHUNK

    rows = 0
    for i in range(0, len(ids), ID_CHUNK):
        chunk = ids[i : i + ID_CHUNK]
        slots = ",".join("?" * len(chunk))
        for q in queries:
            rows += len(con.execute(q.format(ids=slots), chunk).fetchall())
    return rows


def _bare_rows(job: tuple[str, list[int], str]) -> int:
    import sqlite3

    path, ids, as_of = job
    con = sqlite3.connect(path)
    try:
        return fetch_bare(con, ids, _bare_queries(as_of))
    finally:
        con.close()


def bare_rows(path: Path, workers: int) -> int:
    """Every row the export reads, by bare sqlite3 in ``workers`` processes, ``ID_CHUNK`` ids per query."""
    import sqlite3
    from concurrent.futures import ProcessPoolExecutor

    from pixmo.db.queries import ID_CHUNK

    con = sqlite3.connect(path)
    ids = [i for (i,) in con.execute("SELECT id FROM images ORDER BY sha256")]  # shard order: ids at random
    con.close()
    chunks = [ids[i : i + ID_CHUNK] for i in range(0, len(ids), ID_CHUNK)]
    jobs = [(str(path), [i for chunk in chunks[w::workers] for i in chunk], "9999-12-31") for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        return sum(pool.map(_bare_rows, jobs))


def loader_count(out: Path, decode: str, workers: int) -> int:
    from pixmo.data import pixmo_loader

    return sum(1 for _ in pixmo_loader(out, num_workers=workers, shuffle=0, decode=decode))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2, help="export processes and loader workers")
    parser.add_argument("--maxcount", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each timing; the best is reported")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()

    work = args.keep or Path(tempfile.mkdtemp(prefix="pixmo-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        url = f"sqlite:///{work / 'bench.db'}"
        upgrade(url)
        db = Database(url)
        store = LocalStore(work / "blobs", secret="bench-secret", public_url="http://127.0.0.1:8000")
        (image_bytes, t_seed) = timed(lambda: seed(db, store, args.samples, random.Random(0)))
        print(f"seeded {args.samples} samples ({image_bytes / 1e6:.0f} MB of images) in {t_seed:.1f} s", file=sys.stderr)

        options = WebDatasetOptions(maxcount=args.maxcount, workers=args.workers, val_fraction=0.05)
        export_times = []
        for r in range(args.repeat):
            result, t = timed(lambda: export_webdataset(db, store, work / "out", options=options))
            export_times.append(t)
        t_export = min(export_times)
        out = work / "out"
        shards = sorted(out.glob("*.tar"))
        total_bytes = result.bytes

        files = work / "files"
        shutil.rmtree(files, ignore_errors=True)
        files.mkdir()
        for shard in shards:
            subprocess.run(["tar", "-xf", str(shard), "-C", str(files)], check=True)
        tar_times = []
        for r in range(args.repeat):
            (work / "baseline.tar").unlink(missing_ok=True)
            _, t = timed(lambda: subprocess.run(["tar", "-cf", str(work / "baseline.tar"), "-C", str(files), "."],
                                                check=True))
            tar_times.append(t)
        t_tar = min(tar_times)
        tar_bytes = (work / "baseline.tar").stat().st_size
        n_files = sum(1 for _ in files.iterdir())

        t_hash = min(timed(lambda: hash_shards(shards, args.workers))[1] for _ in range(args.repeat))
        n_rows, t_rows = min((timed(lambda: bare_rows(work / "bench.db", args.workers)) for _ in range(args.repeat)),
                             key=lambda x: x[1])
        members = tarfile_read(shards)  # warm the page cache
        t_tarfile = min(timed(lambda: tarfile_read(shards))[1] for _ in range(args.repeat))
        n = result.samples
        n_train = result.manifest["counts"]["train"]
        train = [s for s in shards if s.name.startswith("train-")]
        t_tarfile_train = min(timed(lambda: tarfile_read(train))[1] for _ in range(args.repeat))
        loads = {}
        for decode, workers in [("tensor", 0), ("tensor", args.workers), ("bytes", args.workers)]:
            count, t = min((timed(lambda: loader_count(out, decode, workers)) for _ in range(args.repeat)),
                           key=lambda x: x[1])
            assert count == n_train, (count, n_train)
            loads[(decode, workers)] = t
        report, t_verify = timed(lambda: verify_export(out, workers=args.workers))
        assert report.ok, report.problems[:5]

        mb = total_bytes / 1e6
        cpu = platform.processor() or platform.machine()
        print(f"\n{args.samples} samples, {len(shards)} shards, {mb:.0f} MB; {os.cpu_count()} CPUs ({cpu}); "
              f"export workers {args.workers}; best of {args.repeat}\n")
        print("| what | seconds | samples/s | MB/s | ratio |")
        print("| --- | ---: | ---: | ---: | ---: |")
        print(f"| `pixmo export webdataset` (DB -> shards + manifest) | {t_export:.2f} | {n / t_export:,.0f} | "
              f"{mb / t_export:,.1f} | **{t_tar / t_export:.2f}** of tar |")
        print(f"| `tar -cf` of the same {n_files} files ({tar_bytes / 1e6:.0f} MB) | {t_tar:.2f} | {n / t_tar:,.0f} | "
              f"{tar_bytes / 1e6 / t_tar:,.1f} | 1.00 |")
        print(f"| sha256 of every shard byte ({args.workers} processes; the manifest's checksums alone) | {t_hash:.2f} | "
              f"{n / t_hash:,.0f} | {mb / t_hash:,.1f} | {t_tar / t_hash:.2f} of tar |")
        print(f"| bare sqlite3 read of the {n_rows:,} rows the export reads ({args.workers} processes; no record built) | "
              f"{t_rows:.2f} | {n / t_rows:,.0f} | | {t_tar / t_rows:.2f} of tar |")
        print(f"| plain `tarfile` read of the train shards | {t_tarfile_train:.2f} | {n_train / t_tarfile_train:,.0f} | | 1.00 |")
        for (decode, workers), t in loads.items():
            label = "images -> uint8 tensors + Molmo targets" if decode == "tensor" else "bytes, no image decode"
            print(f"| `pixmo_loader` ({label}, {workers} workers) | {t:.2f} | {n_train / t:,.0f} | | "
                  f"**{t_tarfile_train / t:.2f}** of tarfile |")
        print(f"| `pixmo verify` (checksums, JSON Schema, decode every image; {args.workers} threads) | {t_verify:.2f} | "
              f"{n / t_verify:,.0f} | {mb / t_verify:,.1f} | |")
        print(f"\n(all shards read by tarfile: {members} members in {t_tarfile:.2f} s; seeding {t_seed:.1f} s, "
              f"export runs {', '.join(f'{t:.2f}' for t in export_times)} s, tar runs "
              f"{', '.join(f'{t:.2f}' for t in tar_times)} s)")
        db.dispose()
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
