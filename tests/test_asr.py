"""The ASR backends on real speech (espeak-ng voices with noise), as browsers upload it."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from pixmo.asr import asr_model_id, load_asr
from pixmo.audio import decode_audio
from pixmo.cli import app
from pixmo.errors import ConfigError
from schemas.transcript import TranscriptRecord
from tests.asr_helpers import bundled_asr, encode, random_whisper_checkpoint, silence, speech_clips, wer  # noqa: F401

FORMATS = ("webm", "ogg", "wav", "flac")


@pytest.mark.slow
def test_bundled_model_transcribes_voices_and_formats(bundled_asr, speech_clips):
    # encode as a browser (webm/opus), Firefox (ogg/opus) or a tool (wav, flac) would, then decode once
    audios = [decode_audio(encode(c.samples, fmt)).samples for c, fmt in zip(speech_clips, FORMATS)]
    results, info = bundled_asr.transcribe(audios, language="en")

    assert bundled_asr.model_id == "faster-whisper:tiny.en" == asr_model_id()
    refs = [c.text for c in speech_clips]
    assert wer(refs, [r.text for r in results]) <= 0.15
    for clip, r in zip(speech_clips, results):
        assert wer(clip.text, r.text) <= 0.3, (clip.voice, r.text)
        assert r.language == "en" and r.flags == [], (clip.voice, r.flags, r.metrics)
        assert r.metrics["speech_s"] > 0.5 * clip.duration_s
        assert r.segments and r.segments[-1].end <= r.duration_s + 0.01
        TranscriptRecord.model_validate({"asr_model": bundled_asr.model_id, "status": "ok", **r.to_dict()})
    assert info.recordings == 4 and info.windows >= 4
    assert info.audio_s == pytest.approx(sum(len(a) for a in audios) / 16000)


@pytest.mark.slow
def test_decoding_recordings_together_matches_one_at_a_time(bundled_asr, speech_clips):
    together, _ = bundled_asr.transcribe([c.samples for c in speech_clips[:3]])
    alone = [bundled_asr.transcribe(c.samples)[0][0] for c in speech_clips[:3]]
    assert [r.text for r in together] == [r.text for r in alone]
    # tiny.en decodes any speech as English: asked for another language, it says so instead
    from pixmo.errors import ConfigError

    with pytest.raises(ConfigError, match="English-only model and cannot transcribe de"):
        bundled_asr.transcribe(speech_clips[0].samples, language="de")


@pytest.mark.slow
def test_silence_is_flagged_no_speech_with_empty_text(bundled_asr, speech_clips):
    digital = np.zeros(16000 * 3, np.float32)
    results, _ = bundled_asr.transcribe([silence(6.0), digital, speech_clips[0].samples])
    for r in results[:2]:
        assert r.text == "" and r.flags == ["no_speech"] and r.segments == []
        assert r.metrics["speech_s"] == 0 and r.metrics["words"] == 0
    assert results[2].text and "no_speech" not in results[2].flags


@pytest.mark.slow
def test_openai_whisper_runs_a_checkpoint_given_by_path(tmp_path, speech_clips):
    checkpoint = random_whisper_checkpoint(tmp_path / "random-tiny.pt")
    # fallback off: sampling five temperatures on random weights is slow and proves nothing more
    model = load_asr("openai-whisper", str(checkpoint), batch_size=2, beam_size=5, fallback=False)
    assert model.model_id == asr_model_id("openai-whisper", str(checkpoint))
    assert re.fullmatch(r"openai-whisper:random-tiny@[0-9a-f]{8}", model.model_id)  # the checkpoint's content told apart
    results, info = model.transcribe([speech_clips[0].samples, speech_clips[1].samples, silence(3.0)])
    assert info.windows >= 2
    for r in results:  # random weights give garbage text; the record must still be valid
        TranscriptRecord.model_validate({"asr_model": model.model_id, "status": "ok", **r.to_dict()})
        assert r.language == "en"
    assert results[2].flags == ["no_speech"]
    greedy = load_asr("openai-whisper", str(checkpoint), batch_size=2, beam_size=1, fallback=False)
    assert len(greedy.transcribe([speech_clips[0].samples, speech_clips[1].samples])[0]) == 2


def test_unknown_backend_or_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unknown ASR backend"):
        load_asr("wav2vec")
    with pytest.raises(ConfigError, match="needs --model"):
        load_asr("openai-whisper")
    with pytest.raises(ConfigError, match="no checkpoint file"):
        load_asr("openai-whisper", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="no CTranslate2 model folder '~/models/whisper-small-ct2'"):
        load_asr("faster-whisper", "~/models/whisper-small-ct2")  # the docs' example, not there
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(ConfigError, match="cannot load the faster-whisper model 'not-a-model@"):
        load_asr("faster-whisper", str(tmp_path / "not-a-model"))  # a folder without model.bin


@pytest.mark.slow
def test_transcribe_files_prints_one_json_line_per_file(tmp_path, speech_clips):
    good = tmp_path / "talk.webm"
    good.write_bytes(encode(speech_clips[1].samples, "webm"))
    quiet = tmp_path / "quiet.ogg"
    quiet.write_bytes(encode(silence(4.0), "ogg"))
    broken = tmp_path / "broken.ogg"
    broken.write_bytes(b"OggS" + b"\x00" * 200)

    result = CliRunner().invoke(app, ["transcribe", "files", str(good), str(broken), str(quiet)])
    assert result.exit_code == 1, result.output  # one file failed
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(good), str(broken), str(quiet)]
    for line in lines:
        TranscriptRecord.model_validate({k: v for k, v in line.items() if k != "file"})
    assert lines[0]["status"] == "ok" and wer(speech_clips[1].text, lines[0]["text"]) <= 0.3
    assert lines[0]["duration_s"] == pytest.approx(speech_clips[1].duration_s, abs=0.1)
    assert lines[0]["metrics"]["wpm"] > 0
    assert lines[1]["status"] == "failed" and lines[1]["error"].startswith("not_audio")
    assert lines[2]["text"] == "" and lines[2]["flags"] == ["no_speech"]


@pytest.mark.parametrize("cmd", [["transcribe"], ["transcribe", "files"]])
def test_transcribe_commands_have_help(cmd):
    result = CliRunner().invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
    assert "--batch-size" in result.output and "--backend" in result.output
