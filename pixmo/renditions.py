"""Browser renditions: a JPEG of an image that browsers cannot show as stored (a TIFF), made on first need.

Ingest keeps every format Pillow validates, but Chromium and Firefox show no TIFF: annotators got a
broken-image box. The task and review pages show them this rendition instead, drawn as the loader
decodes the original (EXIF orientation applied, transparency over the viewer's background), so points
clicked on it are the points of the original. Exports keep the original bytes.
"""

from __future__ import annotations

import io
import logging
from typing import Protocol

from pixmo.storage import BlobStore

log = logging.getLogger(__name__)
# what Chromium, Firefox and Safari all show (BMP included)
BROWSER_MIMES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"})
RENDITION_PREFIX = "renditions"
RENDITION_QUALITY = 90
_RGB_MODES = frozenset({"RGB", "RGBA", "RGBX", "P", "PA"})  # whose colour profile still fits once drawn as RGB


class StoredImage(Protocol):
    sha256: str
    storage_key: str
    mime: str


def rendition_key(sha256: str) -> str:
    """Where the rendition of the image with this sha256 lives in the blob store."""
    return f"{RENDITION_PREFIX}/{sha256[:2]}/{sha256[2:4]}/{sha256}.jpg"


def browser_key(store: BlobStore, image: StoredImage) -> str:
    """The key of the blob a browser is shown for ``image``: the original when browsers show its
    format, else its rendition, stored on the first call (content never changes, so any later call,
    from any replica, finds it). Should that fail, the original's key, and the page says that the
    browser cannot show it (a task page must not fail for want of a picture)."""
    if image.mime in BROWSER_MIMES:
        return image.storage_key
    key = rendition_key(image.sha256)
    try:
        if not store.exists(key):
            store.put_bytes(render_for_browser(store.get_bytes(image.storage_key)), key=key, content_type="image/jpeg")
    except Exception:  # noqa: BLE001 - a missing blob, a store outage or a file Pillow cannot draw
        log.warning("no browser rendition of image %s", image.sha256, exc_info=True)
        return image.storage_key
    return key


def render_for_browser(data: bytes) -> bytes:
    """JPEG bytes of the image as annotators are meant to see it (see the module docstring), at full
    size so that clicks are as precise as on the original; the colour profile is kept while it fits."""
    from PIL import Image

    from pixmo.data import decode_image

    with Image.open(io.BytesIO(data)) as src:
        mode, icc = src.mode, src.info.get("icc_profile")
    rgb = decode_image(data, "pil")
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=RENDITION_QUALITY, icc_profile=icc if icc and mode in _RGB_MODES else None)
    return buf.getvalue()
