"""Browser renditions of images browsers cannot show as stored (TIFF)."""

from __future__ import annotations

import io
import logging

import pytest
from PIL import Image as PILImage
from PIL import ImageCms

from pixmo.data import VIEWER_BACKGROUND
from pixmo.media import probe_image
from pixmo.renditions import browser_key, render_for_browser, rendition_key
from pixmo.storage import content_key
from tests.images import image_bytes
from tests.s3server import make_s3_store, s3_server  # noqa: F401


class Stored:
    """What browser_key reads of an images row."""

    def __init__(self, store, data: bytes):  # noqa: ANN001
        import hashlib

        info = probe_image(data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.storage_key = content_key(self.sha256, info.ext)
        self.mime = info.mime
        self.width, self.height = info.width, info.height
        store.put_bytes(data, key=self.storage_key, content_type=info.mime)


def _tiff(im: PILImage.Image, **save) -> bytes:  # noqa: ANN003
    buf = io.BytesIO()
    im.save(buf, "TIFF", **save)
    return buf.getvalue()


def _open(store, key: str) -> PILImage.Image:  # noqa: ANN001
    im = PILImage.open(io.BytesIO(store.get_bytes(key)))
    im.load()
    return im


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP"])
def test_formats_browsers_show_are_served_as_they_are(store, fmt):
    image = Stored(store, image_bytes(40, 30, fmt))
    assert browser_key(store, image) == image.storage_key
    assert not store.exists(rendition_key(image.sha256))


def test_a_tiff_is_shown_as_a_jpeg_of_the_same_picture_made_once(store, monkeypatch):
    im = PILImage.new("RGB", (120, 90), (30, 90, 200))
    im.paste((250, 200, 20), (60, 0, 120, 45))  # top right quarter yellow: the picture is not turned
    image = Stored(store, _tiff(im))
    key = browser_key(store, image)
    assert key == rendition_key(image.sha256) and key.endswith(".jpg")
    shown = _open(store, key)
    assert shown.format == "JPEG" and shown.mode == "RGB" and shown.size == (120, 90)
    assert _close(shown.getpixel((10, 80)), (30, 90, 200)) and _close(shown.getpixel((110, 10)), (250, 200, 20))
    # the next page (another replica) finds it: not drawn again
    monkeypatch.setattr("pixmo.renditions.render_for_browser", lambda data: pytest.fail("drawn twice"))
    assert browser_key(store, image) == key


def test_the_rendition_is_the_shape_points_were_normalised_against(store):
    """EXIF orientation 6: ingest stores the turned size (what browsers show); the rendition is drawn
    turned, as a browser would show the original, and has no orientation left to apply again."""
    im = PILImage.new("RGB", (120, 90), (30, 90, 200))
    im.paste((250, 200, 20), (0, 0, 30, 30))  # top left of the stored pixels
    exif = PILImage.Exif()
    exif[0x0112] = 6
    image = Stored(store, _tiff(im, exif=exif))
    assert (image.width, image.height) == (90, 120)
    shown = _open(store, browser_key(store, image))
    assert shown.size == (90, 120) and shown.getexif().get(0x0112, 1) == 1
    assert _close(shown.getpixel((80, 10)), (250, 200, 20))  # turned 90° clockwise: now top right


def test_transparency_shows_the_viewer_background_and_deep_grey_is_not_white(store):
    rgba = PILImage.new("RGBA", (40, 30), (0, 0, 0, 0))
    rgba.paste((200, 10, 10, 255), (0, 0, 20, 30))
    shown = _open(store, browser_key(store, Stored(store, _tiff(rgba))))
    assert _close(shown.getpixel((5, 5)), (200, 10, 10)) and _close(shown.getpixel((35, 5)), VIEWER_BACKGROUND)
    grey = PILImage.new("I;16", (40, 30), 32768)  # mid grey in 16 bits: a plain conversion clips it to white
    shown = _open(store, browser_key(store, Stored(store, _tiff(grey))))
    assert 120 <= shown.getpixel((5, 5))[0] <= 135


def test_the_colour_profile_is_kept_only_while_it_describes_the_pixels(store):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgb = Stored(store, _tiff(PILImage.new("RGB", (20, 20), (10, 200, 30)), icc_profile=srgb))
    assert _open(store, browser_key(store, rgb)).info.get("icc_profile") == srgb
    # a CMYK profile on the RGB pixels drawn from CMYK would shift every colour
    cmyk = Stored(store, _tiff(PILImage.new("CMYK", (20, 20), (0, 255, 255, 0)), icc_profile=b"not rgb"))
    shown = _open(store, browser_key(store, cmyk))
    assert "icc_profile" not in shown.info and _close(shown.getpixel((5, 5)), (255, 0, 0))


def test_a_rendition_that_cannot_be_made_leaves_the_original(store, caplog):
    """The page then says the browser cannot show the image (a task page must not fail over it)."""
    image = Stored(store, _tiff(PILImage.new("RGB", (20, 20))))
    store.delete(image.storage_key)
    with caplog.at_level(logging.WARNING, "pixmo.renditions"):
        assert browser_key(store, image) == image.storage_key
    assert "no browser rendition" in caplog.text and not store.exists(rendition_key(image.sha256))


def test_renditions_in_an_s3_store(s3_server):
    store = make_s3_store(s3_server)
    image = Stored(store, _tiff(PILImage.new("RGB", (64, 48), (30, 90, 200))))
    key = browser_key(store, image)
    assert key != image.storage_key and _open(store, key).size == (64, 48)
    assert browser_key(store, image) == key


def test_render_for_browser_draws_the_first_page_of_a_multi_page_tiff():
    buf = io.BytesIO()
    first, second = PILImage.new("RGB", (30, 20), (250, 0, 0)), PILImage.new("RGB", (30, 20), (0, 0, 250))
    first.save(buf, "TIFF", save_all=True, append_images=[second])
    shown = PILImage.open(io.BytesIO(render_for_browser(buf.getvalue())))
    assert shown.size == (30, 20) and _close(shown.getpixel((5, 5)), (250, 0, 0))


def _close(a, b, tol: int = 12) -> bool:  # noqa: ANN001
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))
