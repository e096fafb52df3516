"""Load test of the annotation app: simulated annotators against a real `pixmo serve`.

    .venv/bin/python bench/app_load.py [--annotators 8] [--submissions 3] [--backends sqlite,postgres]

Each simulated annotator (a thread with its own HTTP client and bearer token) loops: ask for the
next task (``POST /api/projects/{id}/next``) → upload a real 60 s spoken recording
(webm/opus, made once with espeak-ng) with an idempotency key. The server decodes every upload
(PyAV), checks its length and loudness, stores the blob and writes the row. Per backend, in the
same run, a single annotator does the same work first: that is the baseline of the ratio.

Reported per backend: submissions/s, p50/p99 latency of one next+upload cycle, double
assignments (an image held by more than ``overlap`` annotators, or twice by one; must be 0) and
lost submissions (acknowledged by the server but missing from the database; must be 0).
Bounded: at most ``--annotators`` × ``--submissions`` uploads and ``--max-seconds`` per run,
loopback only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from rich.console import Console
from rich.progress import Progress
from sqlalchemy import create_engine, func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pixmo.audio import SAMPLE_RATE, decode_audio, encode_audio  # noqa: E402
from pixmo.auth import create_token, create_user  # noqa: E402
from pixmo.db.migrate import upgrade  # noqa: E402
from pixmo.db.models import Assignment, Recording  # noqa: E402
from pixmo.db.session import Database  # noqa: E402
from pixmo.projects import attach_images, create_project  # noqa: E402
from pixmo.storage import LocalStore  # noqa: E402

console = Console(stderr=True)
SPEECH = ("At first glance this is a photo of a busy street corner on a sunny afternoon. There are three "
          "people waiting at the crossing, two cars and a red bus. A sign on the left says bakery, open daily. ")


def make_audio(seconds: float) -> bytes:
    """A webm/opus recording (what MediaRecorder sends) of espeak-ng speech, ``seconds`` long."""
    exe = shutil.which("espeak-ng")
    pieces, total = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        if exe:
            subprocess.run([exe, "-s", "150", "-w", str(wav), SPEECH * 3], check=True, capture_output=True)
            piece = decode_audio(str(wav)).samples
        else:  # a voice-like tone when espeak-ng is missing
            t = np.arange(10 * SAMPLE_RATE) / SAMPLE_RATE
            piece = (0.2 * np.sin(2 * np.pi * 220 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    while total < seconds * SAMPLE_RATE:
        pieces.append(piece)
        total += len(piece)
    samples = np.concatenate(pieces)[: int(seconds * SAMPLE_RATE)]
    return encode_audio(samples, fmt="webm", codec="libopus")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Backend:
    name: str
    url: str
    cleanup: list = field(default_factory=list)


def sqlite_backend(root: Path) -> Backend:
    return Backend("sqlite", f"sqlite:///{root / 'bench.db'}")


def postgres_backend(base_url: str) -> Backend:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop() -> None:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in base_url else "?"
    return Backend("postgres", f"{base_url}{sep}options=-csearch_path%3D{schema}", [drop])


def seed(db: Database, store: LocalStore, n_images: int, n_users: int, overlap: int) -> tuple[int, list[str]]:
    from tests.images import image_bytes
    from pixmo.db.models import Image

    with db.session() as s:
        project = create_project(s, f"bench-{uuid.uuid4().hex[:6]}", "caption", min_seconds=60, max_seconds=90,
                                 overlap=overlap)
        s.flush()
        ids = []
        for i in range(n_images):
            data = image_bytes(320, 240, "PNG", seed=project.id * 100_000 + i)
            put = store.put_bytes(data, ext="png")
            im = Image(sha256=put.sha256, storage_key=put.key, width=320, height=240, mime="image/png",
                       bytes=len(data), source="bench")
            s.add(im)
            s.flush()
            ids.append(im.id)
        attach_images(s, project, ids)
        tokens = [create_token(s, create_user(s, f"bench-{project.id}-{i}", None, "annotator"), "bench")
                  for i in range(n_users)]
        return project.id, tokens


@dataclass
class RunResult:
    acknowledged: list[tuple[int, int]] = field(default_factory=list)  # (assignment id, recording id)
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0


def annotator(base: str, token: str, project_id: int, audio: bytes, n: int, deadline: float, out: RunResult,
              lock: threading.Lock, progress, task) -> None:  # noqa: ANN001
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        for _ in range(n):
            if time.monotonic() > deadline:
                return
            t0 = time.perf_counter()
            r = client.post(f"/api/projects/{project_id}/next")
            if r.status_code != 200:
                with lock:
                    out.errors.append(f"next {r.status_code}: {r.text[:100]}")
                return
            assignment = r.json()["assignment"]
            if assignment is None:
                return
            r = client.post(f"/api/assignments/{assignment['id']}/recording",
                            files={"audio": ("take.webm", audio, "audio/webm")},
                            data={"idempotency_key": uuid.uuid4().hex, "active_seconds": "75"})
            dt = time.perf_counter() - t0
            with lock:
                if r.status_code in (200, 201):
                    out.acknowledged.append((assignment["id"], r.json()["id"]))
                    out.latencies.append(dt)
                else:
                    out.errors.append(f"upload {r.status_code}: {r.text[:100]}")
            progress.advance(task)


def run_load(base: str, tokens: list[str], project_id: int, audio: bytes, per_user: int, max_seconds: float,
             label: str) -> RunResult:
    out, lock = RunResult(), threading.Lock()
    deadline = time.monotonic() + max_seconds
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(label, total=len(tokens) * per_user)
        threads = [threading.Thread(target=annotator, args=(base, t, project_id, audio, per_user, deadline, out, lock,
                                                            progress, task)) for t in tokens]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.wall = time.perf_counter() - t0
    return out


def audit(db: Database, project_id: int, overlap: int, result: RunResult) -> tuple[int, int]:
    """(double assignments, lost submissions) as the database sees them."""
    with db.session() as s:
        per_image = s.execute(
            select(Assignment.image_id, func.count(), func.count(func.distinct(Assignment.user_id)))
            .where(Assignment.project_id == project_id, Assignment.status.in_(("leased", "submitted")))
            .group_by(Assignment.image_id)
        ).all()
        doubles = sum(1 for _, n, users in per_image if n > overlap or users < n)
        stored = {(a, r) for a, r in s.execute(
            select(Recording.assignment_id, Recording.id).join(Assignment, Assignment.id == Recording.assignment_id)
            .where(Recording.project_id == project_id, Assignment.status == "submitted")
        )}
    lost = sum(1 for pair in result.acknowledged if pair not in stored)
    return doubles, lost


def start_server(db_url: str, data_dir: Path, port: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PIXMO_ENV": "dev", "PIXMO_DATABASE_URL": db_url, "PIXMO_DATA_DIR": str(data_dir),
           "PIXMO_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    exe = Path(sys.executable).with_name("pixmo")
    cmd = [str(exe) if exe.exists() else "pixmo", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"pixmo serve exited; see {data_dir / 'server.log'}")
        time.sleep(0.1)
    proc.terminate()
    raise RuntimeError("pixmo serve did not answer within 30 s")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def bench_backend(backend: Backend, args, audio: bytes, root: Path) -> list[dict]:  # noqa: ANN001
    data_dir = root / backend.name
    data_dir.mkdir()
    upgrade(backend.url)
    db = Database(backend.url)
    store = LocalStore(data_dir / "blobs", secret="change-me", public_url="http://127.0.0.1")
    port = free_port()
    rows = []
    server = start_server(backend.url, data_dir, port, args.workers)
    try:
        base = f"http://127.0.0.1:{port}"
        for n_users in (1, args.annotators):
            need = max(-(-n_users * args.submissions // args.overlap), args.submissions) + 1
            project_id, tokens = seed(db, store, need, n_users, args.overlap)
            result = run_load(base, tokens, project_id, audio, args.submissions, args.max_seconds,
                              f"{backend.name}: {n_users} annotator(s)")
            doubles, lost = audit(db, project_id, args.overlap, result)
            done = len(result.acknowledged)
            rows.append({
                "backend": backend.name, "annotators": n_users, "submissions": done, "errors": len(result.errors),
                "wall_s": result.wall, "per_s": done / result.wall if result.wall else 0.0,
                "p50_ms": 1000 * pct(result.latencies, 0.5), "p99_ms": 1000 * pct(result.latencies, 0.99),
                "doubles": doubles, "lost": lost,
            })
            for e in result.errors[:3]:
                console.print(f"[yellow]{backend.name}: {e}[/yellow]")
            if result.errors:
                log = (data_dir / "server.log").read_text(errors="replace").splitlines()
                console.print("\n".join(line for line in log if "INFO" not in line)[-3000:])
    finally:
        server.terminate()
        server.wait(timeout=20)
        db.dispose()
        for fn in backend.cleanup:
            fn()
    base_rate = rows[0]["per_s"] or float("nan")
    for r in rows:
        r["ratio"] = r["per_s"] / base_rate
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, default=8, help="concurrent simulated annotators")
    ap.add_argument("--submissions", type=int, default=3, help="submissions per annotator")
    ap.add_argument("--overlap", type=int, default=2, help="distinct annotators per image")
    ap.add_argument("--audio-seconds", type=float, default=60.0, help="length of the uploaded recording")
    ap.add_argument("--max-seconds", type=float, default=180.0, help="time limit per load run")
    ap.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    ap.add_argument("--workers", type=int, default=1, help="`pixmo serve --workers` (processes)")
    ap.add_argument("--postgres-url", default=os.environ.get("PIXMO_BENCH_POSTGRES_URL",
                                                             "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    args = ap.parse_args()
    args.annotators = max(1, min(args.annotators, 64))
    args.submissions = max(1, min(args.submissions, 50))

    console.print(f"making a {args.audio_seconds:.0f} s webm/opus recording …")
    audio = make_audio(args.audio_seconds)
    console.print(f"upload size {len(audio) / 1024:.0f} KiB")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="pixmo-bench-") as tmp:
        for name in [b.strip() for b in args.backends.split(",") if b.strip()]:
            try:
                backend = sqlite_backend(Path(tmp)) if name == "sqlite" else postgres_backend(args.postgres_url)
            except Exception as exc:  # noqa: BLE001 - a missing PostgreSQL skips that backend
                console.print(f"[yellow]skipping {name}: {exc}[/yellow]")
                continue
            rows += bench_backend(backend, args, audio, Path(tmp))

    print(f"\n`bench/app_load.py --annotators {args.annotators} --submissions {args.submissions} "
          f"--overlap {args.overlap} --workers {args.workers}` · {args.audio_seconds:.0f} s webm/opus upload ({len(audio) / 1024:.0f} KiB) · "
          f"{os.cpu_count()} CPUs\n")
    print("| backend | annotators | submissions | errors | wall s | submissions/s | ratio vs 1 annotator | p50 ms | p99 ms | double assignments | lost submissions |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['backend']} | {r['annotators']} | {r['submissions']} | {r['errors']} | {r['wall_s']:.1f} | "
              f"{r['per_s']:.2f} | {r['ratio']:.2f}× | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['doubles']} | {r['lost']} |")
    if any(r["doubles"] or r["lost"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
