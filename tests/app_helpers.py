"""Helpers for the annotation app tests: users, projects with real stored images, real audio."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pixmo.audio import SAMPLE_RATE, encode_audio
from pixmo.auth import create_token, create_user
from pixmo.db.models import Image
from pixmo.db.session import Database
from pixmo.projects import attach_images, create_project
from pixmo.storage import BlobStore
from tests.images import image_bytes

PASSWORD = "correct-horse-battery"
ROLES = ("annotator", "reviewer", "admin")


def add_users(db: Database, names_roles: list[tuple[str, str]], password: str | None = PASSWORD) -> dict[str, int]:
    """Create users (password ``PASSWORD``; None skips the slow argon2 hash); returns name -> id."""
    out = {}
    with db.session() as s:
        for name, role in names_roles:
            user = create_user(s, name, None, role)
            if password is not None:
                user.password_hash = _hash(password)  # argon2 is slow on purpose; hash each password once
            out[name] = user.id
    return out


@functools.cache
def _hash(password: str) -> str:
    from pixmo.auth import hash_password

    return hash_password(password)


def tokens_for(db: Database, names: list[str]) -> dict[str, str]:
    from pixmo.auth import get_user

    with db.session() as s:
        return {n: create_token(s, get_user(s, n), "test") for n in names}


def add_images(db: Database, store: BlobStore, n: int, width: int = 64, height: int = 48, seed: int = 0) -> list[int]:
    """Store ``n`` distinct generated PNGs and add their image rows; returns the ids."""
    ids = []
    with db.session() as s:
        for i in range(n):
            data = image_bytes(width, height, "PNG", seed=seed * 1000 + i)
            put = store.put_bytes(data, content_type="image/png", ext="png")
            im = Image(sha256=put.sha256, storage_key=put.key, width=width, height=height, mime="image/png",
                       bytes=len(data), source="test")
            s.add(im)
            s.flush()
            ids.append(im.id)
    return ids


def make_project(db: Database, store: BlobStore, name: str, kind: str, n_images: int = 1, gold: int = 0,
                 seed: int = 0, size: tuple[int, int] = (64, 48), **config) -> tuple[int, list[int]]:
    """A project with ``n_images`` regular and ``gold`` gold images; returns (project id, image ids)."""
    image_ids = add_images(db, store, n_images + gold, width=size[0], height=size[1], seed=seed)
    with db.session() as s:
        project = create_project(s, name, kind, instructions=f"test {kind} project", **config)
        attach_images(s, project, image_ids[:n_images])
        if gold:
            attach_images(s, project, image_ids[n_images:], gold=True)
        return project.id, image_ids


def as_tiff(db: Database, store: BlobStore, image_id: int, data: bytes | None = None) -> None:
    """Make the image a TIFF (which ingest accepts and Chromium cannot show): 120 x 90, blue, its
    right half yellow; or ``data``."""
    from PIL import Image as PILImage

    if data is None:
        im = PILImage.new("RGB", (120, 90), (30, 90, 200))
        im.paste((250, 200, 20), (60, 0, 120, 90))
        buf = io.BytesIO()
        im.save(buf, "TIFF")
        data = buf.getvalue()
    put = store.put_bytes(data, content_type="image/tiff", ext="tif")
    with db.session() as s:
        image = s.get(Image, image_id)
        image.storage_key, image.sha256, image.mime, image.bytes = put.key, put.sha256, "image/tiff", put.size
        image.width, image.height = 120, 90


def tone(seconds: float, amplitude: float = 0.2, freq: float = 330.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def audio_bytes(seconds: float, amplitude: float = 0.2, fmt: str = "webm") -> bytes:
    """Real encoded audio (webm/opus like MediaRecorder, or ogg/opus)."""
    return encode_audio(tone(seconds, amplitude), fmt=fmt, codec="libopus")


def wav_bytes(samples: np.ndarray) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def speech_wav(path: Path, min_seconds: float) -> Path:
    """A WAV of espeak-ng speech at least ``min_seconds`` long (the text is repeated until it is)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed")
    text = "A red square at the top left, and two blue circles at the bottom right. "
    for repeat in range(1, 20):
        subprocess.run([exe, "-s", "150", "-w", str(path), text * repeat], check=True, capture_output=True)
        from pixmo.audio import decode_audio

        if decode_audio(str(path)).duration_s >= min_seconds:
            return path
    raise AssertionError("could not make long enough speech")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def serve_in_thread(app) -> Iterator[str]:  # noqa: ANN001
    """Run ``app`` in a real uvicorn server on 127.0.0.1 (a free port); yields its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        time.sleep(0.02)
    else:
        raise RuntimeError("uvicorn did not start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
