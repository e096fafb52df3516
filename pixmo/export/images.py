"""The image member of a sample: the original bytes, unless a resize or a format change is asked for."""

from __future__ import annotations

import io

PIL_FORMAT = {"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}
SAVE_OPTIONS = {"JPEG": {"quality": 90}, "WEBP": {"quality": 90}, "PNG": {}}
# modes PNG stores as they are (a palette image becomes RGBA, as its transparency may be per entry)
PNG_MODES = frozenset({"1", "L", "LA", "I;16", "I;16B", "RGB", "RGBA"})
_GREY = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})
_RGB = frozenset({"RGB", "RGBA", "RGBa", "RGBX", "P", "PA"})


def _colour_space(mode: str) -> str:
    return "grey" if mode in _GREY else "rgb" if mode in _RGB else mode


def _storable(im, fmt: str):  # noqa: ANN001, ANN202 - PIL images
    """``im`` in a mode that ``fmt`` can hold: CMYK, YCbCr, LAB, HSV and 32-bit or float grey (TIFF
    gives them all) become RGB, as the loader's ``convert("RGB")`` would; alpha is kept as RGBA."""
    if fmt == "JPEG":
        return im if im.mode in ("RGB", "L") else im.convert("RGB")
    if fmt != "PNG" or im.mode in PNG_MODES:
        return im  # Pillow's WebP encoder converts what it is given itself
    bands = im.getbands()
    return im.convert("RGBA" if im.mode in ("P", "PA") or "A" in bands or "a" in bands else "RGB")


def image_member(data: bytes, original_ext: str, member_ext: str, max_side: int | None = None) -> bytes:
    """Bytes of the image member.

    The original bytes are returned untouched when the format is kept (jpg, png, webp) and the
    image fits in ``max_side``. Otherwise the image is decoded, shrunk so that its longer side is
    ``max_side`` (aspect ratio kept, Lanczos) and encoded as ``member_ext`` (JPEG/WebP quality 90,
    EXIF kept in every format so the orientation survives, and the ICC colour profile while the
    colour space is kept). Re-encoding is deterministic for a given Pillow.
    """
    if original_ext == member_ext and max_side is None:
        return data
    from PIL import Image

    with Image.open(io.BytesIO(data)) as src:
        im = src
        width, height = im.size
        if original_ext == member_ext and max(width, height) <= max_side:
            return data
        fmt = PIL_FORMAT[member_ext]
        if max_side is not None and max(width, height) > max_side:
            scale = max_side / max(width, height)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            if im.format == "JPEG":
                im.draft("RGB", size)
            im = im.resize(size, Image.Resampling.LANCZOS)
        im = _storable(im, fmt)
        buf = io.BytesIO()
        options = dict(SAVE_OPTIONS[fmt])
        # read once the pixels are loaded: a PNG may keep its EXIF (the orientation the points were
        # clicked in) after the image data, where Pillow finds it only then
        exif = src.info.get("exif")
        if exif:
            options["exif"] = exif
        # the colour profile too (a Display P3 photo shifts colour without it), unless the pixels
        # changed colour space (CMYK -> RGB): the profile would then describe other numbers
        # (None, not left out: PNG would take the converted image's copy of the old one)
        icc = src.info.get("icc_profile")
        options["icc_profile"] = icc if icc and _colour_space(src.mode) == _colour_space(im.mode) else None
        im.save(buf, fmt, **options)
        return buf.getvalue()
