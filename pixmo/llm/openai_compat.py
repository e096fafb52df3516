"""The ``openai`` backend: any OpenAI-compatible ``/v1/chat/completions`` server over HTTP.

vLLM, llama.cpp's server, Ollama, OpenAI itself, or ``pixmo llm serve``. Requests of a batch run
concurrently (at most ``concurrency`` in flight); 429s, 5xx answers, timeouts and dropped
connections are retried with exponential backoff (``Retry-After`` honoured but capped); a JSON
Schema is sent as ``response_format`` and, where a server refuses that, as a prompt instruction.
"""

from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from typing import Any

from pixmo.llm.backend import Completion, LLMBackend, Messages, with_schema_instruction
from pixmo.llm.errors import LLMError, RequestRefused

RETRY_STATUSES = {408, 409, 425, 429, 500, 502, 503, 504}
# refusals of the request itself (too long, malformed); any other (401, 403, 404: a wrong key, URL or
# model) is the configuration's fault and stops the run
REQUEST_FAULTS = {400, 413, 422}


def normalise_base_url(url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1``; a URL with a path is kept as given."""
    from urllib.parse import urlsplit

    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


class OpenAIBackend(LLMBackend):
    """Chat completions from an OpenAI-compatible server.

    ``model`` defaults to the first model the server lists; ``api_key`` to ``OPENAI_API_KEY``;
    ``base_url`` to ``OPENAI_BASE_URL`` or OpenAI. ``json_mode``: ``auto`` (try
    ``response_format``, fall back to the prompt), ``schema`` (always send it) or ``prompt``.
    """

    name = "openai"

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        timeout: float = 120.0,
        max_retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        json_mode: str = "auto",
    ):
        super().__init__()
        import httpx

        self.base_url = normalise_base_url(base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.concurrency = max(1, concurrency)
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        if json_mode not in ("auto", "schema", "prompt"):
            raise ValueError("json_mode must be auto, schema or prompt")
        self.json_mode = json_mode
        self._schema_ok: bool | None = None if json_mode == "auto" else json_mode == "schema"
        self._model = model
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @cached_property
    def model_id(self) -> str:  # type: ignore[override]
        if self._model:
            return self._model
        data = self._request("GET", "/models")
        models = [m.get("id") for m in data.get("data", []) if m.get("id")]
        if not models:
            raise LLMError(f"{self.base_url} lists no models; pass --model")
        return models[0]

    # -- HTTP --------------------------------------------------------------------------------
    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One call with retries: transient failures back off and retry, others raise LLMError."""
        import httpx

        last = ""
        for attempt in range(self.max_retries + 1):
            wait = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random() / 2)
            try:
                resp = self._client.request(method, path, json=body)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        last = f"non-JSON response: {resp.text[:200]!r}"
                elif resp.status_code in RETRY_STATUSES:
                    last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                    wait = max(wait, min(self.max_backoff, _retry_after(resp.headers.get("retry-after"))))
                else:
                    raise _HTTPRefused(resp.status_code, resp.text[:500])
            if attempt < self.max_retries:
                time.sleep(wait)
        raise LLMError(f"{self.base_url}{path} failed after {self.max_retries + 1} tries: {last}")

    def _complete_one(self, messages: Messages, max_tokens: int, temperature: float,
                      json_schema: dict | None) -> Completion:
        body: dict[str, Any] = {
            "model": self.model_id,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        if json_schema is not None and self._schema_ok is not False:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": json_schema, "strict": True},
            }
            try:
                return _parse(self._request("POST", "/chat/completions", body))
            except _HTTPRefused as exc:
                if self.json_mode == "schema" or exc.status not in (400, 422):
                    raise self._refused(exc) from None
            del body["response_format"]  # this server may have no structured outputs: ask in the prompt
            body["messages"] = with_schema_instruction(messages, json_schema)
            try:
                done = _parse(self._request("POST", "/chat/completions", body))
            except _HTTPRefused as exc:
                raise self._refused(exc) from None  # refused either way: the request, not the schema
            self._schema_ok = False
            return done
        if json_schema is not None:
            body["messages"] = with_schema_instruction(messages, json_schema)
        try:
            return _parse(self._request("POST", "/chat/completions", body))
        except _HTTPRefused as exc:
            raise self._refused(exc) from None

    def _refused(self, exc: _HTTPRefused) -> LLMError:
        error = RequestRefused if exc.status in REQUEST_FAULTS else LLMError
        return error(f"{self.base_url} refused the request: HTTP {exc.status}: {exc.text}")

    def complete_batch(
        self,
        conversations: list[Messages],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        json_schema: dict | None = None,
    ) -> list[Completion]:
        if not conversations:
            return []
        self.model_id  # noqa: B018 - resolve once before the threads start

        def one(messages: Messages) -> Completion | RequestRefused:
            try:
                return self._complete_one(messages, max_tokens, temperature, json_schema)
            except RequestRefused as exc:
                return exc

        if len(conversations) == 1:
            replies = [one(conversations[0])]
        else:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="llm-http")
            replies = list(self._pool.map(one, conversations))
        done = [r for r in replies if isinstance(r, Completion)]
        self._count(done)
        if len(done) < len(replies):
            first = next(r for r in replies if isinstance(r, RequestRefused))
            raise RequestRefused(str(first), replies)
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        self._client.close()


class _HTTPRefused(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.text = text


def _retry_after(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0


def _parse(data: dict) -> Completion:
    try:
        choice = data["choices"][0]
        content = choice["message"].get("content") or ""
    except (KeyError, IndexError, TypeError) as exc:
        raise LLMError(f"unexpected chat completion: {str(data)[:300]}") from exc
    usage = data.get("usage") or {}
    return Completion(
        text=content.strip(),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choice.get("finish_reason") or "stop",
    )
