"""Transcribe audio files without the database (`pixmo transcribe files`), for trying a model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pixmo.asr.base import ASRModel
from pixmo.audio import AudioError, DecodedAudio, decode_audio

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], ahead: int, workers: int = 2) -> Iterator[tuple[T, Future]]:
    """Yield ``(item, future of fn(item))`` in order, keeping at most ``ahead`` calls in flight.

    Lets PyAV decode the next recordings in threads while the model works on the current ones,
    without decoding a whole corpus into memory.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        queue: deque[tuple[T, Future]] = deque()
        for item in items:
            queue.append((item, pool.submit(fn, item)))
            if len(queue) > ahead:
                yield queue.popleft()
        while queue:
            yield queue.popleft()


def _decode(path: str) -> DecodedAudio | AudioError:
    try:
        return decode_audio(Path(path).read_bytes())
    except OSError as exc:
        return AudioError("unreadable", str(exc))
    except AudioError as exc:
        return exc


def transcribe_files(
    paths: Sequence[str | Path],
    asr: ASRModel | None = None,
    *,
    language: str | None = None,
    batch_size: int = 8,
    **load_kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """One record per file, in order: ``file``, ``asr_model``, ``status``, ``error``, ``text``,
    ``language``, ``duration_s``, ``segments``, ``metrics``, ``flags``.

    ``asr`` is a loaded model, or None to load one with ``load_kwargs`` (see ``load_asr``).
    Files are decoded in threads while earlier ones are transcribed, ``batch_size`` at a time.
    A file that cannot be read or decoded gives a ``failed`` record with the reason.
    """
    if asr is None:
        from pixmo.asr import load_asr

        asr = load_asr(batch_size=batch_size, **load_kwargs)
    batch: list[tuple[str, Future]] = []
    for path, fut in prefetch(_decode, [str(p) for p in paths], ahead=2 * batch_size):
        batch.append((path, fut))
        if len(batch) >= batch_size:
            yield from _run(asr, batch, language)
            batch = []
    if batch:
        yield from _run(asr, batch, language)


def _run(asr: ASRModel, batch: list[tuple[str, Future]], language: str | None) -> Iterator[dict[str, Any]]:
    decoded = [(path, fut.result()) for path, fut in batch]
    good = [d.samples for _, d in decoded if isinstance(d, DecodedAudio)]
    results = iter(asr.transcribe(good, language)[0] if good else [])
    for path, d in decoded:
        if isinstance(d, AudioError):
            yield {"file": path, "asr_model": asr.model_id, "status": "failed", "error": str(d), "text": "",
                   "language": None, "duration_s": None, "segments": [], "metrics": None, "flags": []}
        else:
            yield {"file": path, "asr_model": asr.model_id, "status": "ok", "error": None, **next(results).to_dict()}
