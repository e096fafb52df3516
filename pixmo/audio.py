"""Audio: decode anything a browser records (webm/opus, ogg, wav, flac, mp3, m4a) with PyAV.

Decoding happens once, to 16 kHz mono float32, and both Whisper backends take that array.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000


class AudioError(ValueError):
    """The bytes are not decodable audio; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class DecodedAudio:
    samples: np.ndarray  # float32, mono, SAMPLE_RATE
    container: str
    codec: str

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE

    @property
    def rms(self) -> float:
        return float(np.sqrt(np.mean(np.square(self.samples)))) if len(self.samples) else 0.0


def decode_audio(data: bytes | str, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None) -> DecodedAudio:
    """Decode audio bytes (or a path) to mono float32 at ``sample_rate``; AudioError if impossible.

    With ``max_seconds``, decoding stops as soon as the audio is longer (AudioError ``too_long``):
    a small file of compressed silence can hold hours, which decoded would fill the memory.
    """
    import av

    if isinstance(data, (bytes, bytearray)) and not data:
        raise AudioError("empty", "zero-byte upload")
    in_memory = isinstance(data, (bytes, bytearray))
    source = io.BytesIO(data) if in_memory else data
    # only the containers browsers record, and no protocol beyond the bytes given: ffmpeg otherwise
    # detects any format, and an uploaded SDP file made it bind a port and wait 20 s, an ffconcat
    # one read the server's own files (and was stored as a recording)
    options = {"format_whitelist": ",".join(DEMUXERS), "protocol_whitelist": "none" if in_memory else "file"}
    chunks: list[np.ndarray] = []
    try:
        with av.open(source, options=options, metadata_errors="ignore") as container:
            streams = container.streams.audio
            if not streams:
                raise AudioError("not_audio", "no audio stream")
            stream = streams[0]
            codec = stream.codec_context.name
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            limit = None if max_seconds is None else int(max_seconds * sample_rate)
            decoded = 0
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    decoded += len(chunks[-1])
                if limit is not None and decoded > limit:
                    raise AudioError("too_long", f"longer than {max_seconds:g} s")
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
            fmt = container.format.name
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV raises many error types for bad input
        raise AudioError("not_audio", f"{type(exc).__name__}: {exc}") from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if not len(samples):
        raise AudioError("not_audio", "no audio frames")
    return DecodedAudio(samples=samples, container=fmt, codec=codec)


def encode_audio(
    samples: np.ndarray, sample_rate: int = SAMPLE_RATE, fmt: str = "ogg", codec: str = "libopus", bit_rate: int = 32_000
) -> bytes:
    """Encode mono float32 samples (e.g. ``ogg``/``libopus``, ``webm``/``libopus``, ``flac``/``flac``)."""
    import av

    buf = io.BytesIO()
    rate = 48_000 if codec == "libopus" else sample_rate
    with av.open(buf, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        if codec != "flac":
            stream.bit_rate = bit_rate
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono", rate=rate)
        frame_size = 960 * 20
        data = np.asarray(samples, dtype=np.float32)
        for start in range(0, len(data), frame_size):
            frame = av.AudioFrame.from_ndarray(data[None, start : start + frame_size], format="flt", layout="mono")
            frame.sample_rate = sample_rate
            for rf in resampler.resample(frame):
                for packet in stream.encode(rf):
                    container.mux(packet)
        for rf in resampler.resample(None):
            for packet in stream.encode(rf):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


DEMUXERS = ("ogg", "matroska", "webm", "wav", "flac", "mp3", "mov", "mp4", "m4a")  # ffmpeg's names
MIME_BY_CONTAINER = {"ogg": "audio/ogg", "webm": "audio/webm", "matroska,webm": "audio/webm", "wav": "audio/wav",
                     "flac": "audio/flac", "mp3": "audio/mpeg", "mov,mp4,m4a,3gp,3g2,mj2": "audio/mp4"}
EXT_BY_MIME = {"audio/ogg": "ogg", "audio/webm": "webm", "audio/wav": "wav", "audio/flac": "flac",
               "audio/mpeg": "mp3", "audio/mp4": "m4a"}
