"""Fixtures and helpers for the LLM tests: the real local model (loaded once per session), a real
`pixmo llm serve` subprocess (started once per session), a scripted OpenAI-compatible server for
failure cases (bad JSON, 503s, timeouts), and transcript rows to rewrite."""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from pixmo.db.models import Image, Project, Recording, Transcript
from pixmo.db.session import Database

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the real local model ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_backend():
    """The bundled SmolLM2 through transformers, loaded once for the whole test session."""
    from pixmo.llm import get_backend

    return get_backend("local").load()


# -- `pixmo llm serve` in a subprocess, once per session ----------------------------------------


class _Serve:
    def __init__(self) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"pixmo-llm-serve-{self.port}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pixmo.cli", "llm", "serve", "--port", str(self.port), "--threads", "1"],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
        )
        atexit.register(self.stop)

    def wait(self, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"pixmo llm serve exited:\n{self.log.read().decode(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    return self.base_url
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("pixmo llm serve did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


_serve: _Serve | None = None


def _server() -> _Serve:
    global _serve
    if _serve is None:
        _serve = _Serve()
    return _serve


@pytest.fixture(scope="session")
def llm_server() -> str:
    """The base URL of a real `pixmo llm serve` (the local model behind real HTTP)."""
    return _server().wait()


# -- a scripted OpenAI-compatible server for failure cases -------------------------------------


@dataclass
class Reply:
    """One scripted answer: a chat completion with ``content``, or a raw ``status``/``body``."""

    content: str | None = None
    echo: bool = False
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class ScriptedServer:
    """A real HTTP server on loopback that answers chat completions from a script (the last
    reply repeats) and records every request body."""

    def __init__(self) -> None:
        self.script: list[Reply] = []
        self.requests: list[dict] = []
        # a request this says yes to gets a 400, as a server refuses a prompt beyond its context
        self.refuse_if: Callable[[dict], bool] | None = None
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"object": "list", "data": [{"id": "scripted-model", "object": "model"}]})

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if outer.refuse_if is not None and outer.refuse_if(body):
                    with outer.lock:
                        outer.requests.append(body)
                    self._send(400, {"error": {"message": "This model's maximum context length is 8192 tokens"}})
                    return
                with outer.lock:
                    outer.requests.append(body)
                    reply = outer.script.pop(0) if len(outer.script) > 1 else outer.script[0]
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    self._answer(reply, body)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1

            def _answer(self, reply: Reply, body: dict) -> None:
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.echo:
                    reply = Reply(content=body["messages"][-1]["content"])
                if reply.content is None:
                    self._send(reply.status, reply.body if reply.body is not None else {"error": "scripted"},
                               reply.headers)
                    return
                self._send(200, {
                    "id": "x", "object": "chat.completion", "model": "scripted-model",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def set(self, *replies: Reply | str) -> ScriptedServer:
        self.script = [r if isinstance(r, Reply) else Reply(content=r) for r in replies]
        self.requests = []
        self.max_in_flight = 0
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer()
    yield server
    server.close()


# -- Ray ------------------------------------------------------------------------------------------


# -- rows to rewrite ----------------------------------------------------------------------------


def add_transcripts(db: Database, per_image: list[list[str]], *, project: str | None = "caps",
                    asr_model: str = "test-asr") -> list[list[int]]:
    """One image per entry of ``per_image``, one recording + ok transcript per text; returns the
    transcript ids per image."""
    out: list[list[int]] = []
    with db.session() as session:
        pid = None
        if project:
            p = session.query(Project).filter_by(name=project).one_or_none()
            if p is None:
                p = Project(name=project, kind="caption")
                session.add(p)
                session.flush()
            pid = p.id
        base = session.query(Image).count()
        for i, texts in enumerate(per_image):
            n = base + i
            image = Image(sha256=f"{n:064x}", storage_key=f"img/{n}", width=8, height=8, mime="image/png", bytes=1)
            session.add(image)
            session.flush()
            ids = []
            for j, text in enumerate(texts):
                rec = Recording(project_id=pid, image_id=image.id, storage_key=f"rec/{n}/{j}", sha256=f"{n}-{j}",
                                mime="audio/wav", duration_s=60.0, bytes=1)
                session.add(rec)
                session.flush()
                tr = Transcript(recording_id=rec.id, asr_model=asr_model, text=text, language="en")
                session.add(tr)
                session.flush()
                ids.append(tr.id)
            out.append(ids)
    return out
