"""The transcript record: what ASR writes per recording (``transcripts`` row, `pixmo transcribe files`).

``metrics`` and ``flags`` are what the dashboard and the export filters select on; their
meaning is in docs/transcribe.md. Unknown fields are refused, so writer and readers cannot drift.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["TRANSCRIPT_FLAGS", "TranscriptFlag", "TranscriptMetrics", "TranscriptRecord", "TranscriptSegment"]

TranscriptFlag = Literal["no_speech", "too_short", "low_confidence", "repetition", "wpm_outlier"]
TRANSCRIPT_FLAGS: tuple[str, ...] = TranscriptFlag.__args__


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TranscriptMetrics(_Strict):
    """Quality metrics of one transcript."""

    language: str | None = None
    language_probability: float | None = Field(None, ge=0, le=1)
    duration_s: float = Field(ge=0, description="length of the recording")
    speech_s: float = Field(ge=0, description="seconds of speech found by voice activity detection")
    words: int = Field(ge=0)
    wpm: float = Field(ge=0, description="words per minute of speech")
    avg_logprob: float | None = Field(None, le=0, description="token-weighted mean log-probability")
    no_speech_prob: float | None = Field(None, ge=0, le=1, description="token-weighted mean over windows")
    compression_ratio: float = Field(ge=0, description="highest gzip ratio of any decoded window")
    text_compression_ratio: float = Field(ge=0, description="gzip ratio of the whole text")
    repeated_ngram_ratio: float = Field(ge=0, le=1, description="share of word 4-grams that repeat")
    max_ngram_count: int = Field(ge=0, description="occurrences of the most frequent word 4-gram")
    windows: int = Field(ge=0, description="speech windows (<= 30 s) decoded")
    silent_windows: int = Field(ge=0, description="windows judged silent and dropped")


class TranscriptSegment(_Strict):
    """One decoded speech window; times in seconds from the start of the recording."""

    start: float = Field(ge=0)
    end: float = Field(ge=0)
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = Field(None, ge=0, le=1)
    compression_ratio: float | None = Field(None, ge=0)
    temperature: float = Field(0.0, ge=0)


class TranscriptRecord(_Strict):
    """ASR output for one recording (or file) and one model; failed ones carry the reason."""

    asr_model: str
    status: Literal["ok", "failed"]
    error: str | None = None
    text: str = ""
    language: str | None = None
    duration_s: float | None = Field(None, ge=0)
    segments: list[TranscriptSegment] = Field(default_factory=list)
    metrics: TranscriptMetrics | None = None
    flags: list[TranscriptFlag] = Field(default_factory=list)

    @model_validator(mode="after")
    def _status_fits(self) -> TranscriptRecord:
        if self.status == "failed" and not self.error:
            raise ValueError("a failed transcript needs an error (its reason)")
        if self.status == "ok" and self.metrics is None:
            raise ValueError("an ok transcript needs its metrics")
        if "no_speech" in self.flags and self.text:
            raise ValueError("a no_speech transcript has no text")
        return self
