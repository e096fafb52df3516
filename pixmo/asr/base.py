"""The one ASR interface: ``model.transcribe(audio or [audio, ...]) -> (results, info)``.

Every backend runs the same recipe, so their outputs mean the same thing:

1. voice activity detection cuts each recording into speech windows of at most 30 s;
2. windows of *all* given recordings are decoded together in batches (no conditioning on
   previous text, beam search at temperature 0);
3. a window that Whisper's usual thresholds call silent (no-speech probability above 0.6 and
   average log-probability below -1) is dropped; one that fails them (log-probability below -1
   or compression ratio above 2.4) is decoded again with temperature fallback;
4. per recording: text, segments, quality metrics and flags (:mod:`pixmo.asr.quality`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from pixmo.asr.quality import QualityThresholds, WindowScore, finite_round, quality_flags, quality_metrics, words
from pixmo.asr.windows import VadSettings, Window, group_spans, speech_spans
from pixmo.audio import SAMPLE_RATE
from pixmo.errors import ConfigError

FALLBACK_TEMPERATURES = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class Segment:
    """One decoded window: times in seconds from the start of the recording."""

    start: float
    end: float
    text: str
    avg_logprob: float | None
    no_speech_prob: float | None
    compression_ratio: float | None
    temperature: float = 0.0


@dataclass
class Transcription:
    """The transcript of one recording with its quality metrics and flags."""

    text: str
    language: str | None
    duration_s: float
    segments: list[Segment]
    metrics: dict[str, Any]
    flags: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "language": self.language,
            "duration_s": round(self.duration_s, 3),
            "segments": [asdict(s) for s in self.segments],
            "metrics": self.metrics,
            "flags": list(self.flags),
        }


@dataclass
class TranscribeInfo:
    """What one ``transcribe`` call did: audio seconds in, windows decoded, time spent."""

    model_id: str
    recordings: int = 0
    audio_s: float = 0.0
    speech_s: float = 0.0
    windows: int = 0
    fallback_windows: int = 0
    elapsed_s: float = 0.0

    @property
    def x_realtime(self) -> float:
        return self.audio_s / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class WindowResult:
    """A backend's output for one window."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    n_tokens: int
    temperature: float = 0.0


@dataclass
class DecodeOptions:
    """Decoding settings shared by the backends."""

    beam_size: int = 5
    batch_size: int = 8
    vad: VadSettings | None = field(default_factory=VadSettings)
    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    fallback: bool = True


class ASRModel(ABC):
    """A loaded Whisper model behind the common interface (see :func:`pixmo.asr.load_asr`)."""

    backend: str = ""

    def __init__(self, model_id: str, options: DecodeOptions | None = None):
        self.model_id = model_id
        self.options = options or DecodeOptions()

    # -- what a backend provides --------------------------------------------------------
    @property
    @abstractmethod
    def is_multilingual(self) -> bool:
        """Whether the model knows more than English."""

    @abstractmethod
    def _decode(self, audios: Sequence[np.ndarray], language: str) -> list[WindowResult]:
        """Decode windows (each <= 30 s) in batches of ``options.batch_size``; one result each."""

    @abstractmethod
    def _decode_fallback(self, audio: np.ndarray, language: str) -> WindowResult:
        """Decode one window again, sampling at rising temperatures until it passes."""

    @abstractmethod
    def _detect_language(self, audio: np.ndarray) -> tuple[str, float]:
        """The language spoken in ``audio`` and its probability."""

    # -- the verb ------------------------------------------------------------------------
    def transcribe(
        self,
        audio: np.ndarray | Sequence[np.ndarray],
        language: str | Sequence[str | None] | None = None,
        thresholds: QualityThresholds | Sequence[QualityThresholds] | None = None,
    ) -> tuple[list[Transcription], TranscribeInfo]:
        """Transcribe one 16 kHz mono float32 array, or several decoded together in batches.

        ``language`` pins the language (one for all, or one per recording); None detects it
        (English-only models always say ``en``). ``thresholds`` decide the flags (one for all
        or one per recording). Returns one :class:`Transcription` per input, in order.
        """
        started = time.perf_counter()
        audios = [audio] if isinstance(audio, np.ndarray) else list(audio)
        n = len(audios)
        langs = _per_item(language, n)
        limits = _per_item(thresholds or self.options.thresholds, n)
        info = TranscribeInfo(self.model_id, recordings=n)

        windows: list[Window] = []
        speech = [0.0] * n
        for i, samples in enumerate(audios):
            samples = np.asarray(samples, dtype=np.float32).reshape(-1)
            audios[i] = samples
            spans = speech_spans(samples, self.options.vad)
            speech[i] = sum(e - s for s, e in spans) / SAMPLE_RATE
            windows.extend(group_spans(i, spans))
            info.audio_s += len(samples) / SAMPLE_RATE
        info.speech_s = sum(speech)
        info.windows = len(windows)

        if not self.is_multilingual:  # an English-only model decodes any speech as English
            other = sorted({lang for lang in langs if lang not in (None, "en")})
            if other:
                raise ConfigError(f"{self.model_id} is an English-only model and cannot transcribe "
                                  f"{', '.join(other)}: use a multilingual model (--model)")
        lang_probs: list[float | None] = [1.0 if lang else None for lang in langs]
        for i in range(n):
            if langs[i] is None:
                if not self.is_multilingual:
                    langs[i], lang_probs[i] = "en", 1.0
                elif any(w.index == i for w in windows):
                    first = next(w for w in windows if w.index == i)
                    langs[i], lang_probs[i] = self._detect_language(audios[i][first.start : first.end])

        results: dict[Window, WindowResult] = {}
        for lang in sorted({langs[w.index] for w in windows}):
            group = [w for w in windows if langs[w.index] == lang]
            decoded = self._decode([audios[w.index][w.start : w.end] for w in group], lang)
            results.update(zip(group, decoded, strict=True))

        out = []
        t = self.options.thresholds
        for i, samples in enumerate(audios):
            segments, scores = [], []
            for w in (w for w in windows if w.index == i):
                r = results[w]
                silent = r.no_speech_prob > t.no_speech_prob and r.avg_logprob < t.log_prob
                if not silent and self.options.fallback and (
                    r.avg_logprob < t.log_prob or r.compression_ratio > t.compression_ratio
                ):
                    r = self._decode_fallback(samples[w.start : w.end], langs[i])
                    info.fallback_windows += 1
                    silent = r.no_speech_prob > t.no_speech_prob and r.avg_logprob < t.log_prob
                text = "" if silent else r.text.strip()
                silent = silent or not words(text)  # nothing but punctuation or symbols: no speech
                scores.append(WindowScore(r.avg_logprob, r.no_speech_prob, r.compression_ratio, r.n_tokens, silent))
                if not silent:
                    segments.append(Segment(
                        start=round(w.start / SAMPLE_RATE, 3),
                        end=round(w.end / SAMPLE_RATE, 3),
                        text=text,
                        avg_logprob=finite_round(r.avg_logprob, 4),
                        no_speech_prob=finite_round(r.no_speech_prob, 4),
                        compression_ratio=finite_round(r.compression_ratio, 3),
                        temperature=finite_round(r.temperature, 2) or 0.0,
                    ))
            text = " ".join(s.text for s in segments)
            duration = len(samples) / SAMPLE_RATE
            metrics = quality_metrics(
                text, duration, speech[i], scores, language=langs[i], language_probability=lang_probs[i],
                ngram=limits[i].ngram,
            )
            out.append(Transcription(text, langs[i], duration, segments, metrics, quality_flags(metrics, limits[i])))
        info.elapsed_s = time.perf_counter() - started
        return out, info


def _per_item(value: Any, n: int) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"got {len(value)} per-recording values for {n} recordings")
        return list(value)
    return [value] * n
