"""Errors of the LLM layer; all are `PixmoError`s so the CLI prints them as messages."""

from __future__ import annotations

from pixmo.errors import PixmoError


class LLMError(PixmoError):
    """A backend could not answer (server unreachable, refused, or out of retries)."""


class RequestRefused(LLMError):
    """The server refused a request as malformed (HTTP 400, 413, 422: a prompt beyond the model's
    context, say): the request is at fault, not the server, so it fails as an item of its own while
    the rest of the run goes on.

    Raised by ``complete_batch`` for a batch, ``replies`` holds, in the batch's order, each reply
    or the refusal of its request (None when the backend cannot tell them apart).
    """

    def __init__(self, message: str, replies: list | None = None):
        super().__init__(message)
        self.replies = replies


class OutputInvalid(PixmoError, ValueError):
    """A model reply that does not satisfy its task's output schema.

    ``reason`` is a short category (``invalid_json``, ``schema``, ``empty``, ``citation``) for
    stats; ``detail`` says exactly what was wrong and is sent back to the model on a retry.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
