"""The exporter's tar writer writes exactly what Python's `tarfile` writes, for any member name."""

from __future__ import annotations

import io
import random
import tarfile

import pytest

from pixmo.export.shards import MEMBER_MODE, MEMBER_MTIME, MEMBER_OWNER, TarMemberWriter

NAMES = [
    "a" * 64 + ".json",  # a sample key: the common, templated case
    "x" * 100,  # exactly the ustar name field
    "y" * 101,  # one over: needs a PAX header
    "dir/" + "z" * 150 + ".jpg",
    "ünïcødé.txt",
    "caption.txt",
]


def _tarfile_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), MEMBER_MODE, MEMBER_MTIME
            info.uname = info.gname = MEMBER_OWNER
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _ours(members: list[tuple[str, bytes]], buffer_size: int = 1 << 20) -> bytes:
    buf = io.BytesIO()
    writer = TarMemberWriter(buf, buffer_size=buffer_size)
    for name, data in members:
        writer.add(name, data)
    writer.close()
    return buf.getvalue()


@pytest.mark.parametrize("name", NAMES)
def test_one_member_matches_tarfile(name):
    members = [(name, b"hello world\n")]
    assert _ours(members) == _tarfile_bytes(members)


def test_random_archives_match_tarfile_and_read_back():
    rng = random.Random(7)
    for _ in range(20):
        members = [(rng.choice(NAMES[:1]).replace("a", rng.choice("0123456789abcdef")) + f".{i}",
                    rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))) for i in range(rng.randint(1, 8))]
        ours = _ours(members, buffer_size=rng.choice([1, 600, 4096, 1 << 20]))  # flushed at any point
        assert ours == _tarfile_bytes(members)
        with tarfile.open(fileobj=io.BytesIO(ours)) as tar:
            assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("WEBP", "webp"), ("PNG", "png")])
def test_a_resized_image_keeps_its_colour_profile(fmt, ext):
    """Re-encoding kept only EXIF: JPEG and WebP members lost the ICC profile (colours shift in every
    colour-managed viewer). A CMYK image converted to RGB must not carry its CMYK profile over."""
    from PIL import Image, ImageCms

    from pixmo.export.images import image_member

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), (200, 30, 30)).save(buf, fmt, icc_profile=srgb)
    out = image_member(buf.getvalue(), ext, ext, max_side=10)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (10, 5) and im.info.get("icc_profile") == srgb
    cmyk = io.BytesIO()
    Image.new("CMYK", (40, 20), (0, 200, 200, 0)).save(cmyk, "TIFF", icc_profile=b"not an RGB profile")
    with Image.open(io.BytesIO(image_member(cmyk.getvalue(), "tiff", "png", max_side=10))) as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info
