"""Identical requests are answered once: a backend wrapper backed by the ``llm_cache`` table.

The key is the sha256 of the model id, the messages and every generation parameter, so a cache
hit is exactly the reply the model would give again (only ``temperature == 0`` requests are
cached). Replies are stored as soon as they are generated, in their own transaction: a run that is
killed before writing its results gets them back for free when it resumes.
"""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import select

from pixmo.db.models import LLMCacheEntry
from pixmo.db.queries import insert_ignore
from pixmo.db.session import Database
from pixmo.llm.backend import Completion, LLMBackend, Messages
from pixmo.llm.errors import LLMError, RequestRefused


def request_key(model_id: str, messages: Messages, *, max_tokens: int, temperature: float,
                json_schema: dict | None) -> str:
    """The sha256 of everything that determines a reply."""
    blob = json.dumps(
        {"model": model_id, "messages": messages, "max_tokens": max_tokens, "temperature": temperature,
         "json_schema": json_schema},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CachedBackend(LLMBackend):
    """Wrap ``backend``: look each request up in the database first, generate only the misses
    (each distinct request once, even when repeated within a batch), store what was generated."""

    name = "cached"

    def __init__(self, backend: LLMBackend, db: Database):
        super().__init__()
        self.inner = backend
        self.db = db

    @property
    def model_id(self) -> str:  # type: ignore[override]
        return self.inner.model_id

    def complete_batch(
        self,
        conversations: list[Messages],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        json_schema: dict | None = None,
    ) -> list[Completion]:
        kw = dict(max_tokens=max_tokens, temperature=temperature, json_schema=json_schema)
        if temperature != 0 or not conversations:
            done = self.inner.complete_batch(conversations, **kw)
            self._count(done)
            return done
        keys = [request_key(self.model_id, m, **kw) for m in conversations]
        with self.db.session() as session:
            rows = session.execute(
                select(LLMCacheEntry.request_hash, LLMCacheEntry.response, LLMCacheEntry.finish_reason,
                       LLMCacheEntry.prompt_tokens, LLMCacheEntry.completion_tokens)
                .where(LLMCacheEntry.request_hash.in_(set(keys)))
            ).all()
        found = {r[0]: Completion(r[1], r[3], r[4], r[2], cached=True) for r in rows}
        missing = list(dict.fromkeys(k for k in keys if k not in found))
        if missing:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            refused = None
            try:
                fresh = self.inner.complete_batch([conversations[first[k]] for k in missing], **kw)
            except RequestRefused as exc:
                if exc.replies is None:
                    raise
                refused, fresh = exc, exc.replies
            if len(fresh) != len(missing):  # never cache one request's reply under another's key
                raise LLMError(f"{self.model_id}: {len(fresh)} replies to {len(missing)} requests")
            answered = [(k, c) for k, c in zip(missing, fresh) if isinstance(c, Completion)]
            with self.db.session() as session:
                insert_ignore(session, LLMCacheEntry, [
                    {"request_hash": k, "model": self.model_id, "response": c.text, "finish_reason": c.finish_reason,
                     "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens}
                    for k, c in answered
                ], ["request_hash"])
            found.update(zip(missing, fresh))
            self._count([c for _, c in answered])
            if refused is not None:  # the answered ones are kept (and cached); the refused are the caller's to fail
                raise RequestRefused(str(refused), [found[k] for k in keys])
        out = []
        seen: set[str] = set()
        for k in keys:
            c = found[k]
            if k in seen and not c.cached:  # a repeat within this batch: generated once
                c = Completion(c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, cached=True)
            seen.add(k)
            out.append(c)
        self._count([c for c in out if c.cached])
        return out

    def close(self) -> None:
        self.inner.close()
