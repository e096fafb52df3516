"""Quality metrics, flags and speech windows of transcripts (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pixmo.asr import FLAGS, ASRModel, DecodeOptions, QualityThresholds, WindowResult
from pixmo.asr.quality import WindowScore, compression_ratio, ngram_repetition, quality_flags, quality_metrics
from pixmo.asr.windows import WINDOW_S, group_spans, speech_spans
from pixmo.audio import SAMPLE_RATE
from schemas.transcript import TRANSCRIPT_FLAGS, TranscriptRecord

SR = SAMPLE_RATE
GOOD = WindowScore(avg_logprob=-0.2, no_speech_prob=0.05, compression_ratio=1.6, n_tokens=40)
TEXT = ("A brown dog is sleeping on a red blanket next to the kitchen door, and behind it a window shows "
        "a garden with tall trees and a small wooden shed under a grey sky.")


def metrics(text=TEXT, duration=12.0, speech=11.0, windows=(GOOD,)):
    return quality_metrics(text, duration, speech, list(windows), language="en", language_probability=1.0)


def test_flag_names_are_the_schema_flags():
    assert FLAGS == TRANSCRIPT_FLAGS


def test_clean_transcript_has_metrics_and_no_flags():
    m = metrics()
    assert m["words"] == len(TEXT.split())
    assert m["wpm"] == pytest.approx(m["words"] / 11.0 * 60, abs=0.1)
    assert m["avg_logprob"] == -0.2 and m["no_speech_prob"] == 0.05 and m["compression_ratio"] == 1.6
    assert m["repeated_ngram_ratio"] == 0.0 and m["max_ngram_count"] == 1
    assert quality_flags(m) == []


def test_no_words_is_no_speech_only():
    assert quality_flags(metrics(text="", speech=0.0, windows=())) == ["no_speech"]


def test_decoding_loop_is_flagged_repetition():
    loop = " ".join(["the cat is on the mat"] * 12)
    m = metrics(text=loop, windows=[WindowScore(-0.3, 0.1, compression_ratio(loop), 80)])
    ratio, top = ngram_repetition(loop.split(), 4)
    assert ratio > 0.8 and top >= 11
    assert m["compression_ratio"] > 2.4
    assert "repetition" in quality_flags(m)


def test_short_unsure_and_too_fast_speech_are_flagged():
    assert quality_flags(metrics(text="a dog", speech=1.0)) == ["too_short"]
    unsure = metrics(windows=[WindowScore(-1.4, 0.3, 1.5, 40)])
    assert quality_flags(unsure) == ["low_confidence"]
    too_fast = metrics(speech=4.0)  # ~30 words in 4 s: 450 words per minute
    assert quality_flags(too_fast) == ["wpm_outlier"]
    too_slow = metrics(speech=60.0)
    assert quality_flags(too_slow) == ["wpm_outlier"]
    assert quality_flags(metrics(), QualityThresholds(min_speech_s=30.0)) == ["too_short"]


def test_silent_windows_do_not_count_towards_confidence():
    silent = WindowScore(-1.5, 0.9, 0.0, 1, silent=True)
    m = metrics(windows=[GOOD, silent])
    assert m["avg_logprob"] == -0.2 and m["windows"] == 2 and m["silent_windows"] == 1


def test_non_finite_scores_become_null():
    m = metrics(windows=[WindowScore(float("nan"), float("nan"), 1.5, 40)])
    assert m["avg_logprob"] is None and m["no_speech_prob"] is None


def test_spans_group_into_windows_of_at_most_30_s():
    spans = [(0, 5 * SR), (6 * SR, 20 * SR), (21 * SR, 29 * SR), (31 * SR, 45 * SR), (46 * SR, 120 * SR)]
    windows = group_spans(3, spans)
    assert [(w.start // SR, w.end // SR) for w in windows] == [(0, 29), (31, 45), (46, 76), (76, 106), (106, 120)]
    assert all(w.index == 3 and w.seconds <= WINDOW_S for w in windows)


def test_silence_has_no_speech_spans():
    quiet = (np.random.default_rng(0).standard_normal(3 * SR) * 1e-4).astype(np.float32)
    assert speech_spans(quiet) == []
    assert speech_spans(quiet, vad=None) == []  # the energy fallback agrees
    tone = (0.1 * np.sin(np.arange(70 * SR) / SR * 2 * np.pi * 220)).astype(np.float32)
    assert speech_spans(tone, vad=None) == [(0, 30 * SR), (30 * SR, 60 * SR), (60 * SR, 70 * SR)]


def test_record_contract_refuses_inconsistent_rows():
    TranscriptRecord(asr_model="m", status="failed", error="not_audio: bad header")
    with pytest.raises(ValidationError, match="needs an error"):
        TranscriptRecord(asr_model="m", status="failed")
    with pytest.raises(ValidationError, match="needs its metrics"):
        TranscriptRecord(asr_model="m", status="ok", text="hi")
    with pytest.raises(ValidationError, match="no_speech transcript has no text"):
        TranscriptRecord(asr_model="m", status="ok", text="hi", metrics=metrics(), flags=["no_speech"])
    with pytest.raises(ValidationError):
        TranscriptRecord(asr_model="m", status="ok", metrics=metrics(), flags=["loud"])


class ScriptedASR(ASRModel):
    """A backend that answers each window with the next scripted result: tests the shared recipe
    (silence, fallback, assembly) without a model."""

    def __init__(self, answers, fallback_answer=None):
        super().__init__("scripted:test", DecodeOptions(vad=None))  # fixed 30 s windows
        self.answers, self.fallback_answer, self.fallbacks = list(answers), fallback_answer, 0

    @property
    def is_multilingual(self) -> bool:
        return False

    def _decode(self, audios, language):
        return [self.answers.pop(0) for _ in audios]

    def _decode_fallback(self, audio, language):
        self.fallbacks += 1
        return self.fallback_answer

    def _detect_language(self, audio):
        raise AssertionError("English-only models need no detection")


def _tone(seconds: float) -> np.ndarray:
    return (0.1 * np.sin(np.arange(int(seconds * SR)) / SR * 2 * np.pi * 220)).astype(np.float32)


def test_recipe_drops_silent_and_symbol_windows_and_falls_back_on_bad_ones():
    ok = WindowResult(" A red bicycle leans on a wall.", -0.2, 0.05, 1.4, 9)
    silent = WindowResult(" Thank you.", -1.3, 0.8, 1.1, 3)  # Whisper's silence rule: dropped
    symbols = WindowResult(" ♪ ...", -0.4, 0.2, 1.0, 3)
    looping = WindowResult(" the the the the the the the the the the the the", -0.3, 0.1, 3.5, 40)
    fixed = WindowResult(" a quiet street in the evening", -0.5, 0.1, 1.3, 8, temperature=0.4)
    model = ScriptedASR([ok, silent, symbols, looping], fallback_answer=fixed)
    (first, second), info = model.transcribe([_tone(65), _tone(20)])

    assert model.fallbacks == 1 and info.fallback_windows == 1 and info.windows == 4
    assert first.text == "A red bicycle leans on a wall." and first.metrics["silent_windows"] == 2
    assert [(s.start, s.end) for s in first.segments] == [(0.0, 30.0)]
    assert second.text == "a quiet street in the evening" and second.segments[0].temperature == 0.4
    assert first.language == second.language == "en"

    (quiet,), _ = ScriptedASR([symbols]).transcribe(_tone(5))
    assert quiet.text == "" and quiet.flags == ["no_speech"]
