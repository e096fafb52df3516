"""Whisper speech recognition behind one interface.

    from pixmo.asr import load_asr
    from pixmo.audio import decode_audio

    model = load_asr()                                   # faster-whisper, bundled tiny.en, CPU int8
    [result], info = model.transcribe(decode_audio("talk.webm").samples)
    print(result.text, result.metrics["wpm"], result.flags, info.x_realtime)

``model.transcribe([a, b, c])`` decodes the speech windows of several recordings in shared
batches; ``model.model_id`` (``"faster-whisper:tiny.en"``) is what ``transcripts.asr_model``
records.
"""

from __future__ import annotations

from pixmo.asr.base import (
    ASRModel,
    DecodeOptions,
    Segment,
    TranscribeInfo,
    Transcription,
    WindowResult,
)
from pixmo.asr.quality import FLAGS, QualityThresholds
from pixmo.asr.windows import VadSettings
from pixmo.errors import ConfigError

BACKENDS = ("faster-whisper", "openai-whisper")

__all__ = [
    "ASRModel",
    "BACKENDS",
    "DecodeOptions",
    "FLAGS",
    "QualityThresholds",
    "Segment",
    "TranscribeInfo",
    "Transcription",
    "VadSettings",
    "WindowResult",
    "asr_model_id",
    "load_asr",
]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConfigError(f"unknown ASR backend {backend!r}; use one of {', '.join(BACKENDS)}")


def asr_model_id(backend: str = "faster-whisper", model: str | None = None) -> str:
    """The id that ``load_asr(backend, model).model_id`` will have, without loading the model."""
    _check_backend(backend)
    if backend == "faster-whisper":
        from pixmo.asr.faster_whisper_backend import resolve_model

        return f"{backend}:{resolve_model(model)[1]}"
    from pixmo.asr.openai_whisper_backend import model_name

    return f"{backend}:{model_name(model)}"


def load_asr(
    backend: str = "faster-whisper",
    model: str | None = None,
    device: str = "cpu",
    compute_type: str | None = None,
    *,
    batch_size: int = 8,
    beam_size: int = 5,
    cpu_threads: int = 0,
    num_workers: int | None = None,
    download_root: str | None = None,
    vad: VadSettings | None = VadSettings(),
    thresholds: QualityThresholds = QualityThresholds(),
    fallback: bool = True,
) -> ASRModel:
    """Load a Whisper model.

    ``backend``: ``faster-whisper`` (default; ``model`` None = the bundled tiny.en, or a
    CTranslate2 directory, or a model name) or ``openai-whisper`` (``model`` a name such as
    ``small`` looked up in ``download_root``, or a ``.pt`` checkpoint path). ``device``: ``cpu`` or
    ``cuda``. ``compute_type`` (faster-whisper): default ``int8`` on CPU, ``float16`` on CUDA.
    ``batch_size``: windows decoded together. ``cpu_threads``/``num_workers`` (faster-whisper):
    threads per model worker and workers decoding in parallel; on CPU the default is one
    single-threaded worker per core (at most four). ``vad=None`` turns voice activity detection off.
    """
    _check_backend(backend)
    options = DecodeOptions(beam_size=beam_size, batch_size=batch_size, vad=vad, thresholds=thresholds,
                            fallback=fallback)
    if backend == "faster-whisper":
        from pixmo.asr.faster_whisper_backend import FasterWhisperASR

        return FasterWhisperASR(model, device, compute_type, cpu_threads=cpu_threads, num_workers=num_workers,
                                download_root=download_root, options=options)
    from pixmo.asr.openai_whisper_backend import OpenAIWhisperASR

    if compute_type not in (None, "default", "float32", "float16"):
        raise ConfigError(
            f"openai-whisper has no compute type {compute_type!r} (it uses float16 on CUDA, float32 on CPU)"
        )
    if num_workers not in (None, 1):
        raise ConfigError("num_workers is a faster-whisper option; openai-whisper decodes in one worker")
    return OpenAIWhisperASR(model, device, download_root=download_root, options=options)
