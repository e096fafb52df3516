"""Text in an image (OCR), for ask-the-model answers: ``ocr_text(image_bytes) -> str``.

Uses rapidocr-onnxruntime, whose detection and recognition models ship inside the wheel (no
download). The engine loads on first use and is shared by the process.
"""

from __future__ import annotations

import threading
from typing import Any

from pixmo.errors import ConfigError, ValidationError

_engine: Any = None
_lock = threading.Lock()


def _get_engine() -> Any:
    global _engine
    with _lock:
        if _engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as exc:  # pragma: no cover - depends on the install
                raise ConfigError("OCR needs the `llm` extra: pip install 'pixmo-toolkit[llm]'") from exc
            _engine = RapidOCR()
        return _engine


def ocr_boxes(image_bytes: bytes, *, min_score: float = 0.5) -> list[tuple[list[list[float]], str, float]]:
    """Every text box found: (four corner points in pixels, text, confidence), unordered."""
    if not image_bytes:
        raise ValidationError("no image bytes to read text from")
    engine = _get_engine()
    with _lock:  # one ONNX session; calls are not documented as thread-safe
        try:
            result, _ = engine(image_bytes)
        except Exception as exc:  # noqa: BLE001 - rapidocr raises bare errors for undecodable input
            raise ValidationError(f"could not read the image for OCR: {exc}") from exc
    return [(box, text, float(score)) for box, text, score in (result or []) if float(score) >= min_score]


def ocr_text(image_bytes: bytes, *, min_score: float = 0.5) -> str:
    """The text in the image in reading order: boxes grouped into lines top to bottom, left to
    right within a line; lines joined by newlines. Empty when there is no text."""
    boxes = []
    for box, text, _ in ocr_boxes(image_bytes, min_score=min_score):
        ys = [p[1] for p in box]
        boxes.append((min(ys), max(ys), min(p[0] for p in box), text.strip()))
    lines: list[list[tuple[float, float, float, str]]] = []
    for top, bottom, left, text in sorted(boxes):
        line = lines[-1] if lines else None
        # same line when the vertical extents overlap by more than half the smaller height
        if line and min(bottom, line[0][1]) - max(top, line[0][0]) > 0.5 * min(bottom - top, line[0][1] - line[0][0]):
            line.append((top, bottom, left, text))
        else:
            lines.append([(top, bottom, left, text)])
    return "\n".join(" ".join(t for *_, t in sorted(line, key=lambda b: b[2]) if t) for line in lines).strip()
