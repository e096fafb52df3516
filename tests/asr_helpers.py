"""Speech for ASR tests and the ASR benchmark: espeak-ng voices with a little noise mixed in by sox,
encoded like browsers upload it; a tiny random openai-whisper checkpoint; recordings in the DB."""

from __future__ import annotations

import hashlib
import random
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from pixmo.audio import SAMPLE_RATE, decode_audio, encode_audio
from pixmo.db.models import Image, Recording
from pixmo.storage import BlobStore, content_key

VOICES = ("en-us", "en-gb", "en+m3", "en-us+f2")

SENTENCES = (
    "A brown dog is sleeping on a red blanket next to the kitchen door.",
    "There are three green apples in a white bowl on the wooden table.",
    "The photo shows a busy street with tall buildings and yellow taxis in the rain.",
    "On the left side of the image a woman is reading a book under a large tree.",
    "In the background there is a small boat on the lake and some mountains covered in snow.",
    "The sign above the door says open in big blue letters.",
)

# (codec container, codec) as the browser (webm/opus), Firefox (ogg/opus) or a tool (flac) writes them
FORMATS = {"webm": ("webm", "libopus", "audio/webm"), "ogg": ("ogg", "libopus", "audio/ogg"),
           "flac": ("flac", "flac", "audio/flac")}


def have_speech_tools() -> bool:
    return bool(shutil.which("espeak-ng") and shutil.which("sox"))


def speak(text: str, voice: str = "en-us", speed: int = 160, noise: float = 0.004) -> np.ndarray:
    """``text`` spoken by espeak-ng, with pink noise at amplitude ``noise`` mixed in by sox (16 kHz mono)."""
    with tempfile.TemporaryDirectory() as tmp:
        clean, hiss, mixed = (str(Path(tmp, n)) for n in ("clean.wav", "noise.wav", "mixed.wav"))
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", clean, text], check=True, capture_output=True)
        seconds = subprocess.run(["soxi", "-D", clean], check=True, capture_output=True, text=True).stdout.strip()
        rate = subprocess.run(["soxi", "-r", clean], check=True, capture_output=True, text=True).stdout.strip()
        subprocess.run(["sox", "-R", "-n", "-r", rate, "-c", "1", hiss, "synth", seconds, "pinknoise", "vol", str(noise)],
                       check=True, capture_output=True)
        subprocess.run(["sox", "-R", "-m", clean, hiss, mixed], check=True, capture_output=True)
        return decode_audio(mixed).samples


def encode(samples: np.ndarray, fmt: str) -> bytes:
    """Bytes of ``samples`` in ``fmt`` (webm, ogg, flac; wav via sox-free PyAV pcm)."""
    if fmt == "wav":
        return encode_audio(samples, fmt="wav", codec="pcm_s16le")
    container, codec, _ = FORMATS[fmt]
    return encode_audio(samples, fmt=container, codec=codec)


def silence(seconds: float, level: float = 0.0005, seed: int = 0) -> np.ndarray:
    """Near-silence: very faint white noise (a muted microphone)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


def description(rng: random.Random, n_words: int) -> str:
    """A spoken-style image description of about ``n_words`` words (for 60-90 s recordings)."""
    objects = ["wooden table", "red bicycle", "small dog", "glass of water", "open laptop", "stack of books",
               "green plant", "ceramic mug", "black cat", "paper lamp", "blue car", "old bridge", "tall tree",
               "white boat", "brick wall", "striped umbrella", "yellow taxi", "metal fence", "round clock",
               "leather bag"]
    places = ["on the left side", "on the right side", "in the middle of the picture", "near the top",
              "at the bottom", "in the background", "in the foreground", "next to the window", "behind the door",
              "under the shelf"]
    adjectives = ["bright", "dark", "soft", "warm", "cold", "faded", "shiny", "dusty", "clean", "quiet"]
    templates = [
        "There is a {o1} {p1}, and a {o2} {p2}.",
        "The {o1} looks {a1} and the light around it is {a2}.",
        "I can also see a {o2} {p1} which is partly hidden by the {o1}.",
        "The colors in this part of the image are mostly {a1} and {a2}.",
        "Looking closer, the {o1} has a few small marks on its surface.",
        "In the background there is a {o2}, and the whole scene feels {a1}.",
    ]
    out: list[str] = []
    while sum(len(s.split()) for s in out) < n_words:
        o1, o2 = rng.sample(objects, 2)
        p1, p2 = rng.sample(places, 2)
        a1, a2 = rng.sample(adjectives, 2)
        out.append(rng.choice(templates).format(o1=o1, o2=o2, p1=p1, p2=p2, a1=a1, a2=a2))
    return " ".join(out)


def add_recording(session: Session, store: BlobStore, image_id: int, project_id: int | None, data: bytes,
                  mime: str, duration_s: float, ext: str, key: str | None = None) -> Recording:
    """Store ``data`` as a blob and add its recordings row."""
    sha = hashlib.sha256(data).hexdigest()
    key = key or content_key(sha, ext)
    store.put_bytes(data, key=key, content_type=mime)
    rec = Recording(project_id=project_id, image_id=image_id, storage_key=key, sha256=sha, mime=mime,
                    duration_s=round(duration_s, 3), bytes=len(data))
    session.add(rec)
    session.flush()
    return rec


def add_image(session: Session, name: str = "img") -> Image:
    """An images row (no blob: transcription does not look at the image)."""
    image = Image(sha256=hashlib.sha256(name.encode()).hexdigest(), storage_key=f"images/{name}.png", width=8,
                  height=8, mime="image/png", bytes=100, source="test")
    session.add(image)
    session.flush()
    return image


def random_whisper_checkpoint(path: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised openai-whisper checkpoint (English vocabulary) at ``path``.

    Same file format as the released ``.pt`` files, so ``whisper.load_model(path)`` loads it.
    """
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(seed)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=64, n_text_state=64, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    torch.save({"dims": dims.__dict__, "model_state_dict": model.state_dict()}, path)
    return path


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces: what WER is computed on."""
    import re

    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str | list[str], hypothesis: str | list[str]) -> float:
    """Word error rate (jiwer) after :func:`normalise`."""
    import jiwer

    refs = [reference] if isinstance(reference, str) else reference
    hyps = [hypothesis] if isinstance(hypothesis, str) else hypothesis
    return jiwer.wer([normalise(r) for r in refs], [normalise(h) or "<empty>" for h in hyps])


# --------------------------------------------------------------------------- fixtures


class Clip:
    """A spoken clip: its reference text, the voice, and the 16 kHz samples."""

    def __init__(self, text: str, voice: str, samples: np.ndarray):
        self.text, self.voice, self.samples = text, voice, samples

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@pytest.fixture(scope="session")
def speech_clips() -> list[Clip]:
    """Four ~8 s clips, two sentences each, in four espeak-ng voices with a little noise."""
    if not have_speech_tools():
        pytest.skip("espeak-ng and sox are needed to synthesise speech")
    clips = []
    for i, voice in enumerate(VOICES):
        text = f"{SENTENCES[i]} {SENTENCES[(i + 2) % len(SENTENCES)]}"
        clips.append(Clip(text, voice, speak(text, voice, speed=140)))
    return clips


@pytest.fixture(scope="session")
def bundled_asr():
    """The bundled faster-whisper tiny.en, loaded once."""
    from pixmo.asr import load_asr

    return load_asr()
