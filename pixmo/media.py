"""Media checks: image probing/validation (Pillow); audio decoding lives in pixmo.audio."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image as PILImage
from PIL import UnidentifiedImageError

MIME_BY_FORMAT = {
    "JPEG": "image/jpeg",
    "MPO": "image/jpeg",  # a JPEG with more pictures after the first (phones, stereo cameras); browsers show the first
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
EXT_BY_MIME = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
    "image/gif": "gif",
    "image/bmp": "bmp",
    "image/tiff": "tiff",
}


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int
    mime: str

    @property
    def ext(self) -> str:
        return EXT_BY_MIME[self.mime]


class ImageRejected(ValueError):
    """An image failed validation; ``reason`` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def probe_image(data: bytes, max_pixels: int = 100_000_000) -> ImageInfo:
    """Validate encoded image bytes and return their size and mime type.

    Raises ImageRejected with reason ``empty``, ``not_an_image``, ``unsupported_format``,
    ``decompression_bomb``, ``corrupt`` or ``truncated``. Every byte is checked, so truncated
    files are caught, not just bad headers: by a decode (JPEG at reduced scale, which still reads
    every byte; every frame or page of a GIF, APNG, WebP or TIFF, each held to ``max_pixels`` before
    it is decoded), and a PNG by the CRC of every chunk as well.
    """
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    allow_pixels(max_pixels)  # Pillow refuses twice its own limit before the check below can apply a larger one
    try:
        with warnings.catch_warnings():
            # the explicit max_pixels check below decides; Pillow's own limit only errors at 2x
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            im = PILImage.open(io.BytesIO(data))
            fmt = im.format
            width, height = im.size
    except UnidentifiedImageError as exc:
        if _looks_like_image(data):
            raise ImageRejected("corrupt", "image signature but undecodable header") from exc
        raise ImageRejected("not_an_image", "Pillow cannot identify it") from exc
    except PILImage.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt file
        raise ImageRejected(_decode_failure(exc), str(exc)) from exc
    if fmt not in MIME_BY_FORMAT:
        raise ImageRejected("unsupported_format", f"format {fmt}")
    if width <= 0 or height <= 0:
        raise ImageRejected("corrupt", f"size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("decompression_bomb", f"{width}x{height} exceeds {max_pixels} pixels")
    try:
        im.verify()
        # PNG's verify() walks every chunk and checks its CRC, which catches truncation; every format
        # needs a decode too (a PNG's chunks may be whole and their pixels garbled or cut short by a
        # buggy encoder; JPEG at 1/8 scale still reads every byte).
        # verify() uses the image up, so the pixels and the EXIF below are read from a freshly opened one
        im = PILImage.open(io.BytesIO(data))
        if fmt in ("JPEG", "MPO"):
            im.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        im.load()
        if fmt in ("GIF", "WEBP", "TIFF", "PNG"):  # an animation or a multi-page file cut short fails on a later frame
            for frame in range(1, getattr(im, "n_frames", 1)):
                im.seek(frame)
                # a later GIF frame may grow the canvas past the header's size: checked before it is decoded
                if im.size[0] * im.size[1] > max_pixels:
                    raise ImageRejected("decompression_bomb", f"frame {frame} is {im.size[0]}x{im.size[1]}, "
                                                              f"over {max_pixels} pixels")
                im.load()
    except ImageRejected:
        raise
    except PILImage.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageRejected(_decode_failure(exc), str(exc)) from exc
    # EXIF orientations 5-8 rotate by 90°: browsers show (and annotators point on) the rotated
    # image, so its displayed size is the one points are normalised against.
    if exif_orientation(im, data) in ROTATING_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width=width, height=height, mime=MIME_BY_FORMAT[fmt])


def allow_pixels(max_pixels: int | None = None) -> None:
    """Let Pillow decode images of up to ``max_pixels`` (default: the PIXMO_MAX_IMAGE_PIXELS setting)
    without calling them bombs: what ingest stored under a raised limit must decode in every later
    step too (verify and a resizing export failed on it)."""
    if max_pixels is None:
        from pixmo.config import get_settings

        max_pixels = get_settings().max_image_pixels
    if max_pixels > (PILImage.MAX_IMAGE_PIXELS or 0):
        PILImage.MAX_IMAGE_PIXELS = max_pixels


def _decode_failure(exc: Exception) -> str:
    return "truncated" if "truncated" in str(exc).lower() else "corrupt"


_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _looks_like_image(data: bytes) -> bool:
    return data.startswith(_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that turn the image by 90°


def exif_orientation(im: PILImage.Image, data: bytes) -> int:
    """The EXIF orientation (1-8) of ``im``, opened from ``data`` (not used up by ``verify()``);
    1 when it has none or a broken one."""
    try:
        # getexif() decodes a whole PNG to look for EXIF after the pixels: only when there is some
        if im.format == "PNG" and "exif" not in im.info and b"eXIf" not in data:
            return 1
        return int(im.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to reject the image
        return 1
