"""Audio decoding (pixmo.audio): what browsers record decodes; what ffmpeg would also open does not."""

from __future__ import annotations

import io
import time

import av
import numpy as np
import pytest

from pixmo.audio import MIME_BY_CONTAINER, AudioError, decode_audio, encode_audio

TONE = (0.2 * np.sin(2 * np.pi * 330 * np.arange(16_000 * 2) / 16_000)).astype(np.float32)


def _encoded(fmt: str, codec: str) -> bytes:
    if codec in ("libopus", "flac"):
        return encode_audio(TONE, fmt=fmt, codec=codec)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=16_000, layout="mono")
        frame = av.AudioFrame.from_ndarray(TONE[None, :], format="flt", layout="mono")
        frame.sample_rate = 16_000
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=16_000)
        for part in resampler.resample(frame):
            for packet in stream.encode(part):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "codec"), [("webm", "libopus"), ("ogg", "libopus"), ("mp4", "aac"), ("wav", "pcm_s16le"),
                                            ("flac", "flac"), ("mp3", "mp3")])
def test_what_browsers_record_decodes(fmt, codec, tmp_path):
    audio = decode_audio(_encoded(fmt, codec))
    assert abs(audio.duration_s - 2.0) < 0.15 and audio.container in MIME_BY_CONTAINER and 0.1 < audio.rms < 0.2
    path = tmp_path / f"take.{fmt}"
    path.write_bytes(_encoded(fmt, codec))
    assert abs(decode_audio(str(path)).duration_s - 2.0) < 0.15  # a path (pixmo transcribe files) too


SDP = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 45678 RTP/AVP 0\r\n"


@pytest.mark.parametrize("data", [SDP, b"ffconcat version 1.0\nfile /etc/hostname\n",
                                  b"#EXTM3U\n#EXTINF:10,\nhttp://127.0.0.1:9/a.mp3\n"], ids=["sdp", "ffconcat", "m3u"])
def test_files_that_make_ffmpeg_open_other_things_are_refused_at_once(data, tmp_path):
    """ffmpeg detects any format it knows: an uploaded SDP file bound a port and waited 20 s (every
    such upload held a server thread), an ffconcat file read the server's own files and was stored."""
    started = time.perf_counter()
    with pytest.raises(AudioError) as err:
        decode_audio(data)
    assert err.value.reason == "not_audio" and time.perf_counter() - started < 2
    path = tmp_path / "take.webm"
    path.write_bytes(data)
    with pytest.raises(AudioError):
        decode_audio(str(path))
