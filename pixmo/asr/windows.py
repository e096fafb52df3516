"""Cut audio into the windows Whisper decodes: speech found by VAD, grouped into <= 30 s spans.

Windows from many recordings are then decoded together, which is what fills a batch when each
recording is only 60-90 s long (two or three windows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pixmo.audio import SAMPLE_RATE

WINDOW_S = 30.0
# Quieter than this (RMS) counts as silence where no VAD model is installed.
SILENCE_RMS = 1e-3


@dataclass(frozen=True)
class Window:
    """Samples ``[start, end)`` of recording ``index``."""

    index: int
    start: int
    end: int

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True)
class VadSettings:
    """Silero VAD parameters (faster-whisper's batched defaults)."""

    threshold: float = 0.5
    min_silence_ms: int = 160
    speech_pad_ms: int = 400
    min_speech_ms: int = 250


def speech_spans(samples: np.ndarray, vad: VadSettings | None = VadSettings()) -> list[tuple[int, int]]:
    """Sample ranges that hold speech; the whole signal (if not silent) when ``vad`` is None.

    Uses faster-whisper's bundled Silero VAD (ONNX); without faster-whisper installed, falls
    back to fixed 30 s spans that skip digital silence.
    """
    if len(samples) == 0:
        return []
    if vad is not None:
        try:
            from faster_whisper.vad import VadOptions, get_speech_timestamps
        except ImportError:
            vad = None
        else:
            options = VadOptions(
                threshold=vad.threshold,
                min_silence_duration_ms=vad.min_silence_ms,
                speech_pad_ms=vad.speech_pad_ms,
                min_speech_duration_ms=vad.min_speech_ms,
                max_speech_duration_s=WINDOW_S,
            )
            return [(int(s["start"]), int(s["end"])) for s in get_speech_timestamps(samples, options)]
    step = int(WINDOW_S * SAMPLE_RATE)
    spans = []
    for start in range(0, len(samples), step):
        piece = samples[start : start + step]
        if float(np.sqrt(np.mean(np.square(piece)))) >= SILENCE_RMS:
            spans.append((start, start + len(piece)))
    return spans


def group_spans(index: int, spans: list[tuple[int, int]], max_s: float = WINDOW_S) -> list[Window]:
    """Merge consecutive speech spans into windows no longer than ``max_s`` (start to end)."""
    limit = int(max_s * SAMPLE_RATE)
    pieces: list[tuple[int, int]] = []
    for start, end in spans:
        while end - start > limit:  # never happens with Silero's max_speech_duration_s
            pieces.append((start, start + limit))
            start += limit
        pieces.append((start, end))
    windows: list[Window] = []
    cur: tuple[int, int] | None = None
    for start, end in pieces:
        if cur is not None and end - cur[0] <= limit:
            cur = (cur[0], end)
            continue
        if cur is not None:
            windows.append(Window(index, *cur))
        cur = (start, end)
    if cur is not None:
        windows.append(Window(index, *cur))
    return windows
