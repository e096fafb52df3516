"""LLM backends behind one interface, versioned prompts and the rewrite tasks::

    from pixmo.llm import get_backend
    from pixmo.llm.tasks import clean

    backend = get_backend("local")                      # the bundled SmolLM2-135M, offline
    result = clean(backend, "um so a a red car next to uh a tree")
    result.text, result.produced_by, result.prompt_version
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from pixmo.llm.backend import Completion, LLMBackend, Usage
from pixmo.llm.errors import LLMError, OutputInvalid

__all__ = ["BACKENDS", "Completion", "LLMBackend", "LLMError", "OutputInvalid", "Usage", "backend_from_env",
           "get_backend"]

BACKENDS = ("local", "openai")


def get_backend(name: str = "local", model: str | None = None, base_url: str | None = None,
                api_key: str | None = None, **opts: Any) -> LLMBackend:
    """A backend by name: ``local`` (in-process transformers model; ``model`` is a .gguf file or
    model folder, default the bundled SmolLM2) or ``openai`` (any OpenAI-compatible server at
    ``base_url``). ``opts`` go to the backend (``batch_size``; ``concurrency``, ``timeout``, ...)."""
    from pixmo.errors import ValidationError

    if name == "local":
        from pixmo.llm.local import LocalBackend

        if base_url or api_key:
            raise ValidationError("--base-url and --api-key are for the openai backend")
        return LocalBackend(model, **opts)
    if name == "openai":
        from pixmo.llm.openai_compat import OpenAIBackend

        return OpenAIBackend(model, base_url, api_key, **opts)
    raise ValidationError(f"unknown LLM backend {name!r}; choose one of {', '.join(BACKENDS)}")


def backend_from_env() -> LLMBackend:
    """The backend the settings name (``PIXMO_LLM_BACKEND`` local | openai, ``PIXMO_LLM_MODEL``,
    ``PIXMO_LLM_BASE_URL``, ``PIXMO_LLM_API_KEY``; default: the bundled local model), one per
    process and configuration: what a long-running caller such as the web app should use."""
    from pixmo.config import Settings

    s = Settings()
    key = s.llm_api_key.get_secret_value() if s.llm_api_key else None
    return _cached_backend(s.llm_backend, s.llm_model, s.llm_base_url, key)


@lru_cache(maxsize=8)
def _cached_backend(name: str | None, model: str | None, base_url: str | None, api_key: str | None) -> LLMBackend:
    return get_backend(name or "local", model, base_url, api_key)
