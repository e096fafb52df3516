"""Errors of the LLM layer; all are `PixmoError`s so the CLI prints them as messages."""

from __future__ import annotations

from pixmo.errors import PixmoError


class LLMError(PixmoError):
    """A backend could not answer (server unreachable, refused, or out of retries)."""


class OutputInvalid(PixmoError, ValueError):
    """A model reply that does not satisfy its task's output schema.

    ``reason`` is a short category (``invalid_json``, ``schema``, ``empty``, ``citation``) for
    stats; ``detail`` says exactly what was wrong and is sent back to the model on a retry.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
