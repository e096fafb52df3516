"""The one interface every LLM backend implements: chat messages in, text out, batch capable.

A backend answers a batch of conversations with `Completion` objects (text plus token counts
and why generation stopped); `chat` and `chat_batch` are the plain-text conveniences. When a
JSON Schema is passed, the backend makes the reply JSON as well as it can: the server enforces it
(OpenAI-compatible ``response_format``), or the schema goes into the system prompt and the
reply is started with the schema's opening keys (the local model).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

Messages = list[dict[str, Any]]


@dataclass
class Completion:
    """One reply: its text, token counts and ``finish_reason`` (``stop`` or ``length``)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"
    cached: bool = False

    def __post_init__(self) -> None:
        # a NUL is never text a caption or answer needs, and PostgreSQL's text cannot hold one:
        # a reply with it would fail the whole batch's insert there (and of the cache)
        if "\0" in self.text:
            self.text = self.text.replace("\0", "")


@dataclass
class Usage:
    """What a backend has done so far in this process."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0


class LLMBackend:
    """Base class: subclasses set ``name`` and ``model_id`` and implement `complete_batch`."""

    name = "base"
    model_id: str = ""

    def __init__(self) -> None:
        self.usage = Usage()
        self._usage_lock = threading.Lock()

    def complete_batch(
        self,
        conversations: list[Messages],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        json_schema: dict | None = None,
    ) -> list[Completion]:
        """Answer every conversation; the result list has the same order."""
        raise NotImplementedError

    def chat(self, messages: Messages, *, max_tokens: int = 256, temperature: float = 0.0,
             json_schema: dict | None = None) -> str:
        """The reply text to one conversation."""
        return self.complete_batch([messages], max_tokens=max_tokens, temperature=temperature,
                                   json_schema=json_schema)[0].text

    def chat_batch(self, conversations: list[Messages], *, max_tokens: int = 256, temperature: float = 0.0,
                   json_schema: dict | None = None) -> list[str]:
        """The reply texts to many conversations, generated together where the backend can."""
        done = self.complete_batch(conversations, max_tokens=max_tokens, temperature=temperature,
                                   json_schema=json_schema)
        return [c.text for c in done]

    def close(self) -> None:
        """Release connections or threads (models stay cached for the process)."""

    def _count(self, completions: list[Completion]) -> None:
        with self._usage_lock:
            for c in completions:
                if c.cached:
                    self.usage.cache_hits += 1
                    continue
                self.usage.requests += 1
                self.usage.prompt_tokens += c.prompt_tokens
                self.usage.completion_tokens += c.completion_tokens

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r})"


# -- JSON output helpers ---------------------------------------------------------------------


def schema_instruction(schema: dict) -> str:
    """The sentence that asks for JSON when the server cannot enforce a schema."""
    return "Reply with only a JSON value (no other text) that matches this JSON Schema: " + json.dumps(
        schema, separators=(",", ":")
    )


def with_schema_instruction(messages: Messages, schema: dict) -> Messages:
    """``messages`` with the schema instruction appended to the system message (or a new one)."""
    note = schema_instruction(schema)
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0]['content']}\n\n{note}"
    else:
        out.insert(0, {"role": "system", "content": note})
    return out


def json_prefill(schema: dict) -> str:
    """The opening of any JSON document valid under ``schema``, up to the first free text.

    ``{"pairs": [{"question": "`` for a list of QA objects: starting the reply with it keeps a
    small model on the schema's keys (assistant prefill), and it is the same for every reply.
    """
    out: list[str] = []
    node: dict | None = schema
    for _ in range(16):  # nesting depth guard
        if not isinstance(node, dict):
            break
        kind = node.get("type")
        if kind == "object" and node.get("properties"):
            props = node["properties"]
            required = node.get("required") or list(props)
            key = required[0]
            out.append("{" + json.dumps(key) + ": ")
            node = props[key]
        elif kind == "array" and isinstance(node.get("items"), dict):
            out.append("[")
            node = node["items"]
        elif kind == "string":
            out.append('"')
            break
        else:
            break
    return "".join(out)


def strict_schema(schema: dict) -> dict:
    """A self-contained JSON Schema: ``$ref``s inlined, titles dropped, objects closed and fully
    required (what OpenAI's strict structured outputs demand; harmless elsewhere)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            return walk(defs[node["$ref"].rsplit("/", 1)[-1]])
        out = {k: walk(v) for k, v in node.items() if k not in ("$defs", "title", "default")}
        if out.get("type") == "object" and "properties" in out:
            out["additionalProperties"] = False
            out["required"] = list(out["properties"])
        return out

    return walk(schema)
