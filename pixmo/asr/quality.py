"""Quality metrics and flags of one transcript, from its text and its decoded windows.

Flags are short names that the dashboard and the export filters select on:

- ``no_speech``: voice activity detection found no speech, or every window was judged silent;
  the text is then empty.
- ``too_short``: less speech than ``min_speech_s`` or fewer words than ``min_words``.
- ``low_confidence``: the average token log-probability is below ``log_prob``.
- ``repetition``: a window compresses too well (``compression_ratio``) or too many word n-grams
  repeat (``repeated_ngram_ratio``): the signs of a decoding loop.
- ``wpm_outlier``: words per minute of speech outside ``[wpm_min, wpm_max]``.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

FLAGS = ("no_speech", "too_short", "low_confidence", "repetition", "wpm_outlier")

_WORD_RE = re.compile(r"[\w']+", re.UNICODE)


@dataclass(frozen=True)
class QualityThresholds:
    """Decoding thresholds (Whisper's usual values) and the limits behind each flag."""

    no_speech_prob: float = 0.6  # a window above this AND below log_prob is silence
    log_prob: float = -1.0  # below: fall back to sampling; whole transcript below: low_confidence
    compression_ratio: float = 2.4  # above: fall back to sampling; still above: repetition
    repeated_ngram_ratio: float = 0.4  # share of repeated word n-grams that flags repetition
    ngram: int = 4
    min_speech_s: float = 3.0
    min_words: int = 5
    wpm_min: float = 60.0
    wpm_max: float = 300.0


@dataclass(frozen=True)
class WindowScore:
    """What the model reported for one decoded window (at most 30 s of audio)."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    n_tokens: int
    silent: bool = False


def words(text: str) -> list[str]:
    """Lower-case words of ``text`` (letters, digits, apostrophes)."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def compression_ratio(text: str) -> float:
    """Length of the UTF-8 text over its zlib-compressed length (Whisper's repetition score)."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def ngram_repetition(tokens: Sequence[str], n: int = 4) -> tuple[float, int]:
    """(share of word n-grams that repeat an earlier one, count of the most frequent n-gram)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0, 0
    counts = Counter(grams)
    return 1.0 - len(counts) / len(grams), max(counts.values())


def quality_metrics(
    text: str,
    duration_s: float,
    speech_s: float,
    windows: Sequence[WindowScore],
    *,
    language: str | None = None,
    language_probability: float | None = None,
    ngram: int = 4,
) -> dict[str, Any]:
    """The metrics stored with a transcript (see docs/transcribe.md for each key)."""
    toks = words(text)
    spoken = [w for w in windows if not w.silent]
    n_tokens = sum(w.n_tokens for w in spoken)
    avg_logprob = (
        sum(w.avg_logprob * w.n_tokens for w in spoken) / n_tokens if n_tokens else None
    )
    total_window_tokens = sum(max(w.n_tokens, 1) for w in windows)
    no_speech = (
        sum(w.no_speech_prob * max(w.n_tokens, 1) for w in windows) / total_window_tokens if windows else None
    )
    rep_ratio, top = ngram_repetition(toks, ngram)
    return {
        "language": language,
        "language_probability": finite_round(language_probability, 3),
        "duration_s": round(duration_s, 3),
        "speech_s": round(speech_s, 3),
        "words": len(toks),
        "wpm": round(len(toks) / speech_s * 60.0, 1) if speech_s > 0 and toks else 0.0,
        "avg_logprob": finite_round(avg_logprob, 4),
        "no_speech_prob": finite_round(no_speech, 4),
        "compression_ratio": finite_round(max((w.compression_ratio for w in spoken), default=0.0), 3) or 0.0,
        "text_compression_ratio": round(compression_ratio(text), 3),
        "repeated_ngram_ratio": round(rep_ratio, 4),
        "max_ngram_count": top,
        "windows": len(windows),
        "silent_windows": len(windows) - len(spoken),
    }


def quality_flags(metrics: dict[str, Any], thresholds: QualityThresholds = QualityThresholds()) -> list[str]:
    """The flags (a subset of ``FLAGS``, in that order) that ``metrics`` earn."""
    if metrics["words"] == 0:
        return ["no_speech"]
    flags = []
    if metrics["speech_s"] < thresholds.min_speech_s or metrics["words"] < thresholds.min_words:
        flags.append("too_short")
    if metrics["avg_logprob"] is not None and metrics["avg_logprob"] < thresholds.log_prob:
        flags.append("low_confidence")
    if (
        metrics["compression_ratio"] > thresholds.compression_ratio
        or metrics["repeated_ngram_ratio"] > thresholds.repeated_ngram_ratio
    ):
        flags.append("repetition")
    if metrics["words"] >= thresholds.min_words and not (
        thresholds.wpm_min <= metrics["wpm"] <= thresholds.wpm_max
    ):
        flags.append("wpm_outlier")
    return flags


def finite_round(value: float | None, digits: int) -> float | None:
    """Rounded, or None for a missing or non-finite value (JSON columns refuse NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)
