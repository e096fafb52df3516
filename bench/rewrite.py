"""Benchmark LLM rewriting: batched local generation vs one request at a time, and the `openai`
backend against `pixmo llm serve` at concurrency 1 vs 8.

    .venv/bin/python bench/rewrite.py [--n 16] [--max-tokens 32] [--batch-size 8] [--threads N]

In one run, over the same N spoken transcripts (clean-task prompts, greedy, ``--max-tokens``):
  local one-at-a-time: LocalBackend.complete_batch([one]) per transcript
  local batched:       LocalBackend.complete_batch(all), ``--batch-size`` generated together
  serve c=1 / c=8:     OpenAIBackend(concurrency=1 | 8) over HTTP to a `pixmo llm serve` subprocess
                       (its micro-batcher groups concurrent requests, up to ``--batch-size``)
and prints a Markdown table with captions/s, generated tokens/s and the ratio to the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pixmo.llm import get_backend  # noqa: E402
from pixmo.llm.prompts import load_prompt  # noqa: E402

OBJECTS = ["a red car", "two dogs", "a wooden table", "three green chairs", "a tall tree", "a white fridge",
           "an orange cat", "a blue sofa", "a yellow kite", "four bicycles", "a stop sign", "a brown horse"]
PLACES = ["next to", "behind", "on the left of", "in front of", "under"]


def transcripts(n: int) -> list[str]:
    out = []
    for i in range(n):
        a, b = OBJECTS[i % len(OBJECTS)], OBJECTS[(i * 5 + 3) % len(OBJECTS)]
        out.append(f"um so there's {a} uh {PLACES[i % len(PLACES)]} {b}, and, like, the the sky is blue number {i}")
    return out


def timed(fn):  # noqa: ANN001, ANN201
    start = time.perf_counter()
    done = fn()
    return done, time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(batch_size: int, threads: int) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "pixmo.cli", "llm", "serve", "--port", str(port), "--max-batch", str(batch_size),
         "--threads", str(threads)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("pixmo llm serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="transcripts per measurement")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the backend's)")
    ap.add_argument("--skip-serve", action="store_true", help="only the in-process comparison")
    args = ap.parse_args()

    prompt = load_prompt("clean")
    convs = [prompt.messages(transcript=t) for t in transcripts(args.n)]
    kw = {"max_tokens": args.max_tokens}
    local = get_backend("local", batch_size=args.batch_size, threads=args.threads)
    _, load_s = timed(local.load)
    local.complete_batch(convs[:1], max_tokens=4)  # warm up

    rows = []
    singles, t1 = timed(lambda: [local.complete_batch([c], **kw)[0] for c in convs])
    batched, tb = timed(lambda: local.complete_batch(convs, **kw))
    for name, done, secs in (("local, one at a time", singles, t1),
                             (f"local, batched ({args.batch_size})", batched, tb)):
        tokens = sum(c.completion_tokens for c in done)
        rows.append((name, len(done) / secs, tokens / secs, secs))

    if not args.skip_serve:
        proc, url = start_server(args.batch_size, local.threads)
        try:
            for concurrency in (1, 8):
                client = get_backend("openai", base_url=url, concurrency=concurrency)
                client.chat(convs[0], max_tokens=4)  # warm up the connection and the server
                # other transcripts than above, so nothing is answered from a cache anywhere
                reqs = [prompt.messages(transcript=t + f" ({concurrency})") for t in transcripts(args.n)]
                done, secs = timed(lambda: client.complete_batch(reqs, **kw))  # noqa: B023
                tokens = sum(c.completion_tokens for c in done)
                rows.append((f"openai → pixmo llm serve, concurrency {concurrency}", len(done) / secs,
                             tokens / secs, secs))
                client.close()
        finally:
            proc.terminate()
            proc.wait(10)

    base = rows[0][1]
    serve_base = rows[2][1] if len(rows) > 2 else None
    print(f"\nLLM rewrite (clean prompt), {args.n} transcripts, max {args.max_tokens} new tokens, greedy; "
          f"{local.model_id}, {local.threads} torch thread(s); {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs; model load {load_s:.1f} s\n")
    print("| run | captions/s | generated tokens/s | seconds | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for i, (name, cps, tps, secs) in enumerate(rows):
        ref = base if i < 2 else serve_base
        print(f"| {name} | {cps:.2f} | {tps:.1f} | {secs:.1f} | {cps / ref:.2f}x |")
    print("\nratio: local rows vs local one-at-a-time; serve rows vs serve concurrency 1")


if __name__ == "__main__":
    main()
