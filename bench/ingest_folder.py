"""Benchmark `pixmo ingest folder` against a plain `sha256 + Pillow verify` loop over the same files.

    .venv/bin/python bench/ingest_folder.py [--images 2000] [--workers 4]

Generates N images (mixed sizes, JPEG and PNG) once, then times, in the same run:
  baseline: for each file: read, sha256, PIL.Image.open(...).verify()
  (and, for context, the same loop with a full decode instead of verify())
  ingest:   the full stage into a fresh SQLite database and local blob store (validate, dedupe,
            store the blob, write image + status rows)
and prints a Markdown table with images/s and the ratio ingest / baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import random
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ingest import ingest_folder  # noqa: E402
from pixmo.db.migrate import upgrade  # noqa: E402
from pixmo.db.session import Database  # noqa: E402
from pixmo.storage import LocalStore  # noqa: E402

SIZES = [(320, 240), (640, 480), (800, 600), (1024, 768), (1280, 960), (1600, 1200)]


def make_images(folder: Path, n: int, seed: int = 0) -> int:
    rng = random.Random(seed)
    total = 0
    for i in range(n):
        w, h = rng.choice(SIZES)
        im = Image.linear_gradient("L").resize((w, h)).convert("RGB")
        draw = ImageDraw.Draw(im)
        for _ in range(12):
            x, y = rng.randrange(w), rng.randrange(h)
            r = rng.randint(10, max(11, w // 6))
            draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(256) for _ in range(3)))
        fmt, ext = ("JPEG", "jpg") if i % 3 else ("PNG", "png")
        buf = io.BytesIO()
        im.save(buf, fmt, **({"quality": 88} if fmt == "JPEG" else {"compress_level": 6}))
        path = folder / f"{i // 500:02d}" / f"img{i:05d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(buf.getvalue())
        total += len(buf.getvalue())
    return total


def baseline(folder: Path, decode: bool = False) -> float:
    start = time.perf_counter()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            hashlib.sha256(data).hexdigest()
            if decode:  # what it takes to notice a truncated JPEG: verify() does not decode
                Image.open(io.BytesIO(data)).load()
            else:
                Image.open(io.BytesIO(data)).verify()
    return time.perf_counter() - start


def run_ingest(folder: Path, work: Path, workers: int) -> tuple[float, dict]:
    url = f"sqlite:///{work / 'bench.db'}"
    upgrade(url)
    db = Database(url)
    store = LocalStore(work / "blobs", secret="bench", public_url="http://localhost")
    start = time.perf_counter()
    stats = ingest_folder(db, store, folder, progress=False, workers=workers)
    elapsed = time.perf_counter() - start
    db.dispose()
    return elapsed, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "images"
        folder.mkdir()
        t0 = time.perf_counter()
        nbytes = make_images(folder, args.images)
        print(f"generated {args.images} images ({nbytes / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        baseline(folder)  # warm the page cache so both runs read from memory
        base_s = baseline(folder)
        decode_s = baseline(folder, decode=True)
        ingest_s, stats = run_ingest(folder, tmp / "run", args.workers)
        assert stats["statuses"].get("stored") == args.images, stats
        rate_base, rate_ingest = args.images / base_s, args.images / ingest_s
        print("| what | seconds | images/s | MB/s |\n|---|---:|---:|---:|")
        print(f"| plain loop: sha256 + Pillow verify | {base_s:.2f} | {rate_base:.0f} | {nbytes / 1e6 / base_s:.1f} |")
        print(f"| plain loop: sha256 + full Pillow decode | {decode_s:.2f} | {args.images / decode_s:.0f} | {nbytes / 1e6 / decode_s:.1f} |")
        print(f"| `pixmo ingest folder` ({args.workers} workers, SQLite + local blobs) | {ingest_s:.2f} | {rate_ingest:.0f} | {nbytes / 1e6 / ingest_s:.1f} |")
        print(f"\nratio ingest / plain loop: **{rate_ingest / rate_base:.2f}**; ingest / full-decode loop: "
              f"**{decode_s / ingest_s:.1f}** ({args.images} images, {nbytes / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
