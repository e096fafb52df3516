"""OCR with rapidocr-onnxruntime (models ship in the wheel): text in reading order."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageDraw, ImageFont

from pixmo.errors import ValidationError
from pixmo.ocr import ocr_text


def _png(lines: list[tuple[tuple[int, int], str]], size=(420, 140)) -> bytes:
    im = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=36)
    for xy, text in lines:
        draw.text(xy, text, fill="black", font=font)
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_ocr_reads_lines_in_order():
    # the right-hand word is drawn first: reading order comes from positions, not drawing order
    image = _png([((250, 20), "DAD"), ((20, 20), "BEST"), ((20, 80), "Open 9-5")])
    assert ocr_text(image) == "BEST DAD\nOpen 9-5"


@pytest.mark.slow
def test_ocr_of_an_image_without_text_is_empty():
    assert ocr_text(_png([])) == ""
    with pytest.raises(ValidationError):
        ocr_text(b"")
    with pytest.raises(ValidationError, match="could not read the image"):
        ocr_text(b"not an image")
