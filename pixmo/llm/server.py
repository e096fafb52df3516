"""``pixmo llm serve``: a backend (the local model by default) as an OpenAI-compatible server.

``POST /v1/chat/completions`` (non-streaming; ``response_format`` json_schema / json_object),
``GET /v1/models`` and ``GET /health``. Requests that arrive together are generated together:
a micro-batcher collects them for a few milliseconds (up to ``max_batch``) and runs one batch per
distinct set of generation parameters, so concurrent clients share the model's batching.
"""

from __future__ import annotations

import asyncio
import json
import queue
import secrets
import threading
import time
from concurrent.futures import Future
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from pixmo.llm.backend import Completion, LLMBackend


class MicroBatcher:
    """Collect concurrent requests into batches for one backend, on one worker thread."""

    def __init__(self, backend: LLMBackend, *, max_batch: int = 8, max_wait_s: float = 0.02):
        self.backend = backend
        self.max_batch = max(1, max_batch)
        self.max_wait_s = max_wait_s
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="llm-batcher", daemon=True)
        self._thread.start()

    def submit(self, messages: list[dict], *, max_tokens: int, temperature: float,
               json_schema: dict | None) -> Future:
        fut: Future = Future()
        params = (max_tokens, temperature, json.dumps(json_schema, sort_keys=True) if json_schema else None)
        self._queue.put((params, messages, json_schema, fut))
        return fut

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(items) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                items.append(item)
            groups: dict[tuple, list] = {}
            for item in items:
                groups.setdefault(item[0], []).append(item)
            for (max_tokens, temperature, _), group in groups.items():
                try:
                    done = self.backend.complete_batch([g[1] for g in group], max_tokens=max_tokens,
                                                       temperature=temperature, json_schema=group[0][2])
                except Exception as exc:  # noqa: BLE001 - handed to each waiting request
                    for g in group:
                        g[3].set_exception(exc)
                    continue
                for g, c in zip(group, done):
                    g[3].set_result(c)


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[dict[str, Any]] | None = None

class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    response_format: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = 1


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise ValueError(f"content part {part.get('type')!r} is not supported by a text-only model")
        parts.append(part.get("text", ""))
    return "".join(parts)


def create_app(backend: LLMBackend, *, max_batch: int = 8, api_key: str | None = None, max_tokens_limit: int = 4096):
    """The FastAPI app serving ``backend``; ``api_key`` makes a Bearer token required."""
    batcher = MicroBatcher(backend, max_batch=max_batch)

    @asynccontextmanager
    async def lifespan(_app):  # noqa: ANN001, ANN202
        yield
        batcher.close()

    app = FastAPI(title="pixmo llm serve", version="1", lifespan=lifespan)
    app.state.batcher = batcher

    def auth(request: Request) -> None:
        if api_key and not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {api_key}"):
            raise HTTPException(401, "invalid API key")

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": backend.model_id}

    @app.get("/v1/models", dependencies=[Depends(auth)])
    def models() -> dict:
        return {"object": "list", "data": [{"id": backend.model_id, "object": "model", "owned_by": "pixmo"}]}

    @app.post("/v1/chat/completions", dependencies=[Depends(auth)])
    async def chat(req: ChatRequest):  # noqa: ANN202
        if req.stream:
            return error(400, "stream=true is not supported")
        if req.n != 1:
            return error(400, "only n=1 is supported")
        try:
            messages = [{"role": m.role, "content": _text(m.content)} for m in req.messages]
        except ValueError as exc:
            return error(400, str(exc))
        schema = None
        if req.response_format:
            kind = req.response_format.get("type")
            if kind == "json_schema":
                schema = (req.response_format.get("json_schema") or {}).get("schema")
                if not isinstance(schema, dict):
                    return error(400, "response_format.json_schema.schema must be an object")
            elif kind == "json_object":
                schema = {"type": "object"}
            elif kind != "text":
                return error(400, f"response_format type {kind!r} is not supported")
        limit = min(req.max_completion_tokens or req.max_tokens or 256, max_tokens_limit)
        fut = batcher.submit(messages, max_tokens=limit, temperature=req.temperature, json_schema=schema)
        try:
            done: Completion = await asyncio.wrap_future(fut)
        except Exception as exc:  # noqa: BLE001
            return error(500, f"{type(exc).__name__}: {exc}", "server_error")
        text, finish = done.text, done.finish_reason
        for stop in [req.stop] if isinstance(req.stop, str) else (req.stop or []):
            if stop and stop in text:
                text, finish = text[: text.index(stop)], "stop"
        return {
            "id": f"chatcmpl-{secrets.token_hex(12)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": backend.model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
                      "total_tokens": done.prompt_tokens + done.completion_tokens},
        }

    return app


def serve(host: str = "127.0.0.1", port: int = 8001, *, model: str | None = None, max_batch: int = 8,
          api_key: str | None = None, threads: int | None = None, log_level: str = "warning") -> None:
    """Load the local model and serve it until interrupted."""
    import uvicorn

    from pixmo.llm.local import LocalBackend

    backend = LocalBackend(model, batch_size=max_batch, threads=threads).load()
    uvicorn.run(create_app(backend, max_batch=max_batch, api_key=api_key), host=host, port=port,
                log_level=log_level)
