"""Tiny generated image files for tests: good ones of several formats and bad ones of every kind."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG", seed: int = 0) -> bytes:
    rng = random.Random(seed)
    im = Image.new("RGB", (width, height), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(20):
        x, y = rng.randrange(width), rng.randrange(height)
        im.putpixel((x, y), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def bomb_png(width: int = 12_000, height: int = 12_000) -> bytes:
    """A small PNG whose declared size is huge (1-bit, compresses to a few KB)."""
    buf = io.BytesIO()
    Image.new("1", (width, height)).save(buf, "PNG")
    return buf.getvalue()


def _gif_blocks(data: bytes) -> tuple[bytes, list[bytes]]:
    """A GIF's head (header, screen descriptor, global colour table) and its blocks (extensions, images)."""
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    head, blocks = data[:pos], []
    while data[pos] != 0x3B:  # the trailer
        start = pos
        if data[pos] == 0x21:  # extension: label, then sub-blocks
            pos += 2
        else:  # image: descriptor, local colour table, LZW code size, then sub-blocks
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1
        while data[pos]:
            pos += data[pos] + 1
        pos += 1
        blocks.append(data[start:pos])
    return head, blocks


def gif_with_growing_frame(screen: tuple[int, int] = (10, 10), frame: tuple[int, int] = (200, 200)) -> bytes:
    """A two-frame GIF whose logical screen is ``screen`` and whose second frame is ``frame``: Pillow
    grows the canvas for it, so only a check of each frame sees its real size."""
    def gif(size: tuple[int, int]) -> bytes:
        im = Image.new("P", size, 1)
        im.putpalette([0, 0, 0, 255, 0, 0])
        buf = io.BytesIO()
        im.save(buf, "GIF")
        return buf.getvalue()

    head, first = _gif_blocks(gif(screen))
    _, second = _gif_blocks(gif(frame))
    return head + b"".join(first) + b"".join(second) + b"\x3b"


def mixed_folder(root: Path) -> dict[str, str | None]:
    """Write good and bad files below ``root``; returns name -> expected reject reason (None if good)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "sub").mkdir(exist_ok=True)
    good_png = image_bytes(fmt="PNG", seed=1)
    good_jpg = image_bytes(80, 60, fmt="JPEG", seed=2)
    files: dict[str, tuple[bytes, str | None]] = {
        "a.png": (good_png, None),
        "b.jpg": (good_jpg, None),
        "sub/c.webp": (image_bytes(30, 30, fmt="WEBP", seed=3), None),
        "sub/copy-of-a.png": (good_png, None),  # same bytes as a.png: stored once
        "empty.jpg": (b"", "empty"),
        "notes.txt": (b"not an image at all\n", "not_an_image"),
        "truncated.jpg": (image_bytes(400, 300, fmt="JPEG", seed=4)[:600], "truncated"),
        "corrupt.png": (good_png[:40] + b"\x00" * 40 + good_png[80:], "corrupt"),
        "bomb.png": (bomb_png(), "decompression_bomb"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    return {name: reason for name, (_, reason) in files.items()}
