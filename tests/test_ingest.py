"""Ingesting a folder: every good image stored once, every bad file reported with its reason."""

from __future__ import annotations

import hashlib
import io
import os

import pytest
from sqlalchemy import func, select

from pipelines.ingest import ingest_folder
from pixmo.db.models import Image, IngestItem, Job, ProjectImage
from pixmo.errors import ValidationError
from pixmo.media import ImageRejected, probe_image
from pixmo.projects import create_project
from tests.images import bomb_png, gif_with_growing_frame, image_bytes, mixed_folder


def test_probe_reports_size_and_mime():
    info = probe_image(image_bytes(64, 48, "JPEG"))
    assert (info.width, info.height, info.mime, info.ext) == (64, 48, "image/jpeg", "jpg")


@pytest.mark.parametrize(
    "data,reason",
    [
        (b"", "empty"),
        (b"hello", "not_an_image"),
        (image_bytes(400, 300, "JPEG")[:500], "truncated"),
        (bomb_png(), "decompression_bomb"),
    ],
)
def test_probe_rejects_bad_bytes(data, reason):
    with pytest.raises(ImageRejected) as err:
        probe_image(data, max_pixels=50_000_000)
    assert err.value.reason == reason


def test_a_gif_frame_larger_than_its_screen_is_held_to_max_pixels():
    """The screen size passed the check while a later frame grew the canvas (Pillow decodes it):
    a 146 KB GIF decoded 200 million pixels and was stored as 10x10."""
    data = gif_with_growing_frame((10, 10), (200, 200))
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:  # the file is what it says: a small screen, a big frame
        assert im.size == (10, 10) and im.n_frames == 2
        im.seek(1)
        assert im.size == (200, 200)
    assert probe_image(data, max_pixels=50_000).width == 10  # within the limit: a valid GIF
    with pytest.raises(ImageRejected) as err:
        probe_image(data, max_pixels=10_000)
    assert err.value.reason == "decompression_bomb" and "frame 1" in str(err.value)


def test_ingest_mixed_folder_then_rerun_adds_nothing(db, store, tmp_path):
    expected = mixed_folder(tmp_path / "in")
    with db.session() as s:
        create_project(s, "p", "caption")
    stats = ingest_folder(db, store, tmp_path / "in", "p")

    assert stats["statuses"] == {"stored": 3, "duplicate": 1, "rejected": 5}
    bad = {n: r for n, r in expected.items() if r}
    with db.session() as s:
        items = {i.source_ref: i for i in s.scalars(select(IngestItem).where(IngestItem.job_id == stats["job_id"]))}
        assert set(items) == set(expected)
        for name, reason in bad.items():
            assert items[name].status == "rejected"
            assert items[name].reason.split(":")[0] == reason, (name, items[name].reason)
        assert items["sub/copy-of-a.png"].status == "duplicate"
        assert items["sub/copy-of-a.png"].image_id == items["a.png"].image_id
        images = s.scalars(select(Image)).all()
        assert len(images) == 3
        for im in images:  # blobs are stored, content-addressed, byte-identical
            assert hashlib.sha256(store.get_bytes(im.storage_key)).hexdigest() == im.sha256
        webp = s.scalars(select(Image).where(Image.mime == "image/webp")).one()
        assert (webp.width, webp.height) == (30, 30)
        assert s.scalar(select(func.count()).select_from(ProjectImage)) == 3

    again = ingest_folder(db, store, tmp_path / "in", "p")
    assert again["statuses"] == {"exists": 3, "duplicate": 1, "rejected": 5}
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 3
        assert s.scalar(select(func.count()).select_from(ProjectImage)) == 3
        jobs = s.scalars(select(Job).order_by(Job.id)).all()
        assert [j.status for j in jobs] == ["succeeded", "succeeded"]
        assert jobs[0].stats["reasons"]["decompression_bomb"] == 1
    assert len(list(store.iter_keys())) == 3


def test_ingest_unknown_project_is_a_clear_error(sqlite_db, store, tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ValidationError, match="no project named 'nope'"):
        ingest_folder(sqlite_db, store, tmp_path / "in", "nope")


def test_ingest_missing_folder_is_a_clear_error(sqlite_db, store, tmp_path):
    with pytest.raises(ValidationError, match="is not a folder"):
        ingest_folder(sqlite_db, store, tmp_path / "missing")


def test_failed_run_is_marked_failed(sqlite_db, store, tmp_path, monkeypatch):
    mixed_folder(tmp_path / "in")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "put_bytes", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest_folder(sqlite_db, store, tmp_path / "in")
    with sqlite_db.session() as s:
        job = s.scalars(select(Job)).one()
        assert job.status == "failed" and "disk on fire" in job.error
        assert s.scalar(select(func.count()).select_from(Image)) == 0


def test_probe_reports_the_displayed_size_of_rotated_jpegs():
    import io

    from PIL import Image

    im = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° CW on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    info = probe_image(buf.getvalue())
    assert (info.width, info.height) == (48, 64)


def test_probe_reads_png_orientation_before_or_after_the_pixels():
    import io
    import struct

    from PIL import Image

    im = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "PNG", exif=exif.tobytes())
    early = buf.getvalue()
    assert early.find(b"eXIf") < early.find(b"IDAT")
    start = early.find(b"eXIf") - 4
    chunk = early[start : start + 12 + struct.unpack(">I", early[start : start + 4])[0]]
    rest = early.replace(chunk, b"")
    end = rest.find(b"IEND") - 4
    late = rest[:end] + chunk + rest[end:]  # an eXIf chunk after the image data is allowed too
    for data in (early, late):
        info = probe_image(data)
        assert (info.width, info.height) == (48, 64)
    plain = io.BytesIO()
    im.save(plain, "PNG")
    assert (probe_image(plain.getvalue()).width, probe_image(plain.getvalue()).height) == (64, 48)


def test_loader_decodes_rotated_jpegs_as_displayed():
    import io

    from PIL import Image

    from pixmo.data import decode_image

    im = Image.new("RGB", (64, 48), (200, 30, 30))
    exif = im.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    assert decode_image(buf.getvalue(), mode="pil").size == (48, 64)


def test_odd_files_and_names_are_reported_not_fatal(sqlite_db, store, tmp_path):
    """A FIFO (whose read would block), a link to an endless device, a name that is not UTF-8:
    each gets a row; the good files are stored."""
    import io
    import os

    from PIL import Image as PILImage

    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "good.png").write_bytes(image_bytes(fmt="PNG", seed=1))
    os.mkfifo(folder / "pipe.jpg")
    os.symlink("/dev/zero", folder / "zero.jpg")
    (folder / os.fsdecode(b"bad\xffname.png")).write_bytes(image_bytes(fmt="PNG", seed=2))
    mpo = io.BytesIO()  # a phone's multi-picture JPEG
    PILImage.new("RGB", (40, 30), (200, 10, 10)).save(mpo, "MPO", save_all=True,
                                                       append_images=[PILImage.new("RGB", (40, 30))])
    (folder / "camera.jpg").write_bytes(mpo.getvalue())
    frames = [PILImage.new("P", (60, 60), i * 40) for i in range(4)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    (folder / "cut.gif").write_bytes(gif.getvalue()[: len(gif.getvalue()) * 6 // 10])

    stats = ingest_folder(sqlite_db, store, folder)
    assert stats["statuses"] == {"stored": 3, "rejected": 3}
    with sqlite_db.session() as s:
        items = {i.source_ref: (i.status, (i.reason or "").split(":")[0]) for i in s.scalars(select(IngestItem))}
        mimes = sorted(s.scalars(select(Image.mime)))
    assert items == {
        "good.png": ("stored", ""), "bad\\xffname.png": ("stored", ""), "camera.jpg": ("stored", ""),
        "pipe.jpg": ("rejected", "not_a_file"), "zero.jpg": ("rejected", "not_a_file"),
        "cut.gif": ("rejected", "truncated"),
    }
    assert mimes == ["image/jpeg", "image/png", "image/png"]


def test_two_ingests_of_one_folder_at_once_both_finish(db, store, tmp_path):
    """Each image counts as stored by one run only (on PostgreSQL both runs counted the images they
    both inserted as stored: 3,920 stored for 2,000 images)."""
    import threading

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(300):
        (folder / f"{i:04d}.png").write_bytes(image_bytes(fmt="PNG", seed=100 + i))
    outcomes = []

    def run() -> None:
        try:
            outcomes.append(ingest_folder(db, store, folder, workers=2)["statuses"])
        except Exception as exc:  # noqa: BLE001 - a failure is what the test looks for
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert sum(o.get("stored", 0) for o in outcomes) == 300
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Image)) == 300
        assert set(s.scalars(select(Job.status).where(Job.kind == "ingest"))) == {"succeeded"}


def test_linked_folders_are_walked_once(db, store, tmp_path):
    """Links to files were followed but links to folders skipped without a word; a loop or two links
    to one folder must not walk it twice."""
    real = tmp_path / "real"
    real.mkdir()
    for i in range(3):
        (real / f"{i}.png").write_bytes(image_bytes(fmt="PNG", seed=300 + i))
    root = tmp_path / "in"
    root.mkdir()
    os.symlink(real, root / "photos")
    os.symlink(real, root / "again")
    os.symlink(root, real / "back-up")  # a loop
    stats = ingest_folder(db, store, root)
    assert stats["statuses"] == {"stored": 3} and stats["total"] == 3


def test_new_images_are_inserted_in_one_order_whatever_the_paths(db, store, tmp_path, monkeypatch):
    """Two runs over copies of a download named apart inserted the same images in opposite orders:
    on PostgreSQL each waited on a row the other held, and one died of a deadlock."""
    import pipelines.ingest

    seen = []
    real = pipelines.ingest.insert_ignore_returning

    def spy(session, model, rows, *args):  # noqa: ANN001, ANN002, ANN202
        if model is Image:
            seen.append([r["sha256"] for r in rows])
        return real(session, model, rows, *args)

    monkeypatch.setattr(pipelines.ingest, "insert_ignore_returning", spy)
    folder = tmp_path / "copy"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i:02d}.png").write_bytes(image_bytes(fmt="PNG", seed=500 + i))
    ingest_folder(db, store, folder)  # one batch
    assert len(seen[0]) == 20 and seen[0] == sorted(seen[0])


def _png_with_idat(data: bytes, idat: bytes) -> bytes:
    """``data`` (a PNG of one IDAT chunk) with that chunk's payload replaced, its CRC made right."""
    import struct
    import zlib

    pos = data.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", data[pos:pos + 4])
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    return data[:pos] + chunk + data[pos + 12 + length:]


@pytest.mark.parametrize("damage", ["garbled", "short"])
def test_a_png_whose_chunks_are_whole_but_pixels_broken_is_rejected(damage):
    """PNG was checked by its chunks' CRCs alone: pixels garbled or cut short by a buggy encoder (the
    CRCs made to match) were stored, and failed later in an export or a training run."""
    import zlib

    data = image_bytes(64, 64, "PNG", seed=3)
    pos = data.index(b"IDAT") - 4
    idat = data[pos + 8:pos + 8 + int.from_bytes(data[pos:pos + 4], "big")]
    if damage == "garbled":
        broken = idat[:20] + bytes(b ^ 0x5A for b in idat[20:60]) + idat[60:]
    else:
        broken = zlib.compress(bytes(100))  # a whole zlib stream, far fewer rows than the header says
    with pytest.raises(ImageRejected) as err:
        probe_image(_png_with_idat(data, broken))
    assert err.value.reason in ("corrupt", "truncated")
    assert probe_image(_png_with_idat(data, idat)).width == 64  # the splice itself breaks nothing
