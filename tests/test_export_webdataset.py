"""Webdataset export: demo -> export -> verify, byte-identical reruns, interrupted runs, filters, S3."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from typer.testing import CliRunner

from pixmo.db.models import (
    Caption, Export, Image, Job, PointSet, Project, ProjectImage, QAPair, Recording, Review, Transcript, utcnow,
)
from pixmo.demo import create_demo
from pixmo.errors import ValidationError
from pixmo.export import ExportFilters, WebDatasetOptions, export_webdataset, verify_export
from pixmo.export.manifest import MANIFEST_NAME
from pixmo.storage import TMP_PREFIX
from tests.export_helpers import SECRET, demo, demo_template  # noqa: F401
from tests.s3server import make_s3_store, s3_server  # noqa: F401


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _samples(folder: Path) -> dict[str, dict]:
    """key -> {suffix: bytes} over every shard of an export folder."""
    out: dict[str, dict] = {}
    for shard in sorted(folder.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for info in tar:
                key, suffix = info.name.split(".", 1)
                out.setdefault(key, {})[suffix] = tar.extractfile(info).read()
    return out


def test_round_trip_demo_export_verify_and_byte_identical_rerun(db, store, tmp_path):
    create_demo(db, store, 12, seed=0, speech=False)
    options = WebDatasetOptions(maxcount=4, val_fraction=0.25, workers=2)
    first = export_webdataset(db, store, tmp_path / "a", options=options)

    report = verify_export(tmp_path / "a")
    assert report.ok, [str(p) for p in report.problems]
    assert report.validator.startswith("jsonschema")
    with db.session() as s:
        n_images = s.scalar(select(func.count()).select_from(Image))
        expected = {
            "captions": s.scalar(select(func.count()).select_from(Caption)),
            "transcripts": s.scalar(select(func.count()).select_from(Transcript)),
            "recordings": s.scalar(select(func.count()).select_from(Recording)),
            "point_sets": s.scalar(select(func.count()).select_from(PointSet)),
            "qa": s.scalar(select(func.count()).select_from(QAPair)),
            "reviews": s.scalar(select(func.count()).select_from(Review)),
        }
        shas = set(s.scalars(select(Image.sha256)))
    counts = first.manifest["counts"]
    assert first.samples == report.samples == n_images == 12
    assert {k: counts[k] for k in expected} == expected
    assert counts["train"] + counts["validation"] == 12 and counts["shards"] >= 3
    assert first.manifest["versions"]["asr_models"] == ["demo/synthetic"]
    assert first.manifest["code_version"]

    samples = _samples(tmp_path / "a")
    assert set(samples) == shas
    for key, members in samples.items():
        record = json.loads(members["json"])
        assert record["key"] == key and record["image"]["sha256"] == key
        assert members[record["image"]["ext"]]  # original bytes: sha checked by verify
        assert record["projects"] == ["demo-ask", "demo-captions", "demo-explain", "demo-points"]
        assert record["captions"] and record["transcripts"] and record["recordings"]
        assert record["lineage"]["prompt_versions"] == ["demo-v1"]
        texts = {c["text"] for c in record["captions"]} | {t["text"] for t in record["transcripts"]}
        txt = members["txt"].decode()  # the best caption (rules: tests/test_export_records.py)
        assert txt in texts or (txt == "" and record["review_status"] == "rejected")
    assert any(json.loads(m["json"])["point_sets"] for m in samples.values())
    assert any(json.loads(m["json"])["reviews"] for m in samples.values())

    # a second export of the same database is byte-identical, manifest included
    second = export_webdataset(db, store, tmp_path / "b", options=WebDatasetOptions(maxcount=4, val_fraction=0.25, workers=1))
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert second.snapshot_id == first.snapshot_id
    with db.session() as s:
        rows = s.scalars(select(Export)).all()
        assert len(rows) == 1 and rows[0].snapshot_id == first.snapshot_id  # same snapshot: one row
        assert rows[0].output_url == str((tmp_path / "b").resolve())
        assert [s_["sha256"] for s_ in rows[0].shards] == [s_["sha256"] for s_ in first.manifest["shards"]]
        jobs = s.scalars(select(Job).where(Job.kind == "export")).all()
        assert [j.status for j in jobs] == ["succeeded", "succeeded"]
        assert jobs[0].stats["total"] == 12


def test_flipped_byte_fails_verify_naming_the_shard(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    result = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    shard = result.manifest["shards"][1]["name"]
    data = bytearray((out / shard).read_bytes())
    data[2000] ^= 0x01
    (out / shard).write_bytes(bytes(data))

    report = verify_export(out)
    assert not report.ok
    assert report.bad_shards == [shard]
    assert any("sha256" in p.message for p in report.problems)

    cli = CliRunner().invoke(_cli_app(), ["verify", str(out)])
    assert cli.exit_code == 1
    assert shard in cli.output


def test_a_damaged_manifest_is_a_problem_not_a_crash(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    good = json.loads((out / MANIFEST_NAME).read_text())
    edits = [
        (lambda m: m["shards"][0].pop("sha256"), "shards[0] (train-000000.tar) has no valid 'sha256'"),
        (lambda m: m.update(shards="x"), "'shards' is not a list"),
        (lambda m: m["shards"][1].update(samples="4"), "shards[1] (train-000001.tar) has no valid 'samples'"),
        (lambda m: m["shards"][0].update(name="../evil.tar"), "shards[0] has no shard name"),
        (lambda m: m["splits"]["train"].update(shards=None), "splits['train'] has no list of shard names"),
        (lambda m: m.pop("counts"), "'counts' is not an object"),
        (lambda m: m["options"].update(max_side="abc"), "options.max_side is 'abc', not a size in pixels"),
        (lambda m: m["options"].update(max_side=0), "options.max_side is 0, not a size in pixels"),
    ]
    for edit, message in edits:
        manifest = json.loads(json.dumps(good))
        edit(manifest)
        (out / MANIFEST_NAME).write_text(json.dumps(manifest))
        report = verify_export(out)
        assert not report.ok and [p.shard for p in report.problems] == [MANIFEST_NAME]
        assert f"{MANIFEST_NAME} is damaged: {message}" in report.problems[0].message
        cli = CliRunner().invoke(_cli_app(), ["verify", str(out)])
        assert cli.exit_code == 1 and "Traceback" not in cli.output
    # counts that are no counts: reported against the shards, the rest still checked, with a bar
    for bad in ("x", [1], -1, None):
        manifest = json.loads(json.dumps(good))
        manifest["counts"]["samples"] = bad
        (out / MANIFEST_NAME).write_text(json.dumps(manifest))
        report = verify_export(out, progress=True)
        assert [p.message for p in report.problems] == [
            "snapshot_id does not match the manifest's content (the manifest was edited)",
            "counts.samples differs from the sum of the shards' samples",
        ]
        assert report.samples == 12


def _break_width(record: dict) -> list[str]:
    record["image"]["width"] = -3  # the schema wants a positive width
    record["surprise"] = True  # and no unknown fields
    return ["image/width: -3", "'surprise' was unexpected"]


def _break_review_time(record: dict) -> list[str]:
    record["reviews"] = [{"target_type": "caption", "target_id": 1, "verdict": "approved", "reason": "",
                          "reviewer": "rev", "created_at": "yesterday"}]
    return ["reviews/0/created_at: \"yesterday\" is not a \"date-time\""]


def _break_not_present(record: dict) -> list[str]:  # only the pydantic model says this
    record["point_sets"] = [{"id": 1, "label": "cat", "points": [[0.5, 0.5]], "not_present": True,
                             "method": "pointing", "annotator": None}]
    return ["point_sets/0: Value error, a not_present point set must have no points"]


def _break_key(record: dict) -> list[str]:  # only the pydantic model says this
    record["image"]["sha256"] = "0" * 64
    return ["(record): Value error, key must equal image.sha256"]


@pytest.mark.parametrize("damage", [_break_width, _break_review_time, _break_not_present, _break_key])
def test_a_record_against_the_schema_fails_verify_naming_the_sample_and_field(demo, tmp_path, damage):
    import io

    db, store = demo
    out = tmp_path / "out"
    result = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    shard = result.manifest["shards"][0]["name"]
    members = []
    with tarfile.open(out / shard) as tar:
        for info in tar:
            members.append((info, tar.extractfile(info).read()))
    key = members[0][0].name.split(".")[0]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            if info.name == f"{key}.json":
                record = json.loads(data)
                expected = damage(record)
                data = json.dumps(record).encode()
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / shard).write_bytes(buf.getvalue())

    report = verify_export(out)
    schema_problems = [p.message for p in report.problems if p.key == key and "match the schema" in p.message]
    for message in expected:
        assert any(message in m for m in schema_problems), (message, [str(p) for p in report.problems])
    assert all(p.shard == shard for p in report.problems)


def test_an_export_of_another_schema_version_and_a_shard_listed_twice_are_named(demo, tmp_path):
    """An export written by an older pixmo used to fail every record against the new schema (one
    finding per sample); a shard listed twice in a manifest was checked once and passed."""
    from pixmo.export.manifest import snapshot_id
    from schemas.export import EXPORT_SCHEMA_VERSION

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    good = json.loads((out / MANIFEST_NAME).read_text())
    assert good["schema_version"] == EXPORT_SCHEMA_VERSION and verify_export(out).ok
    old = {**good, "schema_version": EXPORT_SCHEMA_VERSION - 1}
    old["snapshot_id"] = snapshot_id(old)
    (out / MANIFEST_NAME).write_text(json.dumps(old))
    report = verify_export(out)
    assert [(p.shard, p.key) for p in report.problems] == [(MANIFEST_NAME, None)], [str(p) for p in report.problems]
    assert f"export schema version {EXPORT_SCHEMA_VERSION - 1}" in report.problems[0].message
    assert report.samples == good["counts"]["samples"]  # checksums, members and images still checked

    twice = json.loads(json.dumps(good))
    twice["shards"].append(dict(twice["shards"][0]))
    twice["counts"]["shards"] += 1
    twice["snapshot_id"] = snapshot_id(twice)
    (out / MANIFEST_NAME).write_text(json.dumps(twice))
    report = verify_export(out)
    assert any(p.shard == good["shards"][0]["name"] and "listed more than once" in p.message for p in report.problems)


def test_verify_recomputes_each_samples_split_from_its_key(demo, tmp_path):
    """A record's split was only compared with its shard's: a sample in the wrong split (an exporter
    bug, or shards moved between exports of other fractions) passed."""
    from pixmo.export.manifest import snapshot_id
    from pixmo.export.records import split_of

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["options"]["val_fraction"] = 0.5  # as if the shards were of an export with this fraction
    manifest["snapshot_id"] = snapshot_id(manifest)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_export(out)
    with db.session() as s:
        moved = sorted(k for k in s.scalars(select(Image.sha256)) if split_of(k, 0.5) == "validation")
    assert moved and sorted(p.key for p in report.problems) == moved, [str(p) for p in report.problems]
    assert all("the hash of its key puts it in 'validation'" in p.message for p in report.problems)


def test_verify_reports_missing_and_unlisted_shards_and_missing_manifest(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=5, val_fraction=0, workers=1))
    (out / "train-000001.tar").rename(out / "train-000009.tar")
    report = verify_export(out)
    assert {"train-000001.tar", "train-000009.tar"} <= set(report.bad_shards)
    (out / MANIFEST_NAME).unlink()
    report = verify_export(out)
    assert not report.ok and "no manifest.json" in str(report.problems[0]) and "did not finish" in str(report.problems[0])
    report = verify_export(out / "typo")
    assert not report.ok and "has no manifest.json: no such folder" in str(report.problems[0])


def _cli_app():
    from pixmo.cli import app

    return app


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from pixmo.db.session import Database
    from pixmo.export import WebDatasetOptions, export_webdataset
    from pixmo.storage import LocalStore

    written = 0
    def pause_mid_shard(n):
        global written
        written += n
        if written == 6:  # shard 0 (4 samples) is complete, shard 1 is half written
            print("PAUSED", flush=True)
            time.sleep(120)

    db = Database(sys.argv[1])
    store = LocalStore(sys.argv[2], secret="s", public_url="http://x")
    export_webdataset(db, store, sys.argv[3], options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1),
                      progress=pause_mid_shard)
    """
)


def test_killed_export_leaves_nothing_complete_looking_and_a_rerun_completes(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, db.url, str(store.root), str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == "PAUSED", proc.stderr.read()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    names = sorted(p.name for p in out.iterdir())
    assert MANIFEST_NAME not in names
    complete = [n for n in names if not n.startswith(TMP_PREFIX)]
    partial = [n for n in names if n.startswith(TMP_PREFIX)]
    assert complete == ["train-000000.tar"]  # only the shard that was finished has a final name
    assert len(partial) == 1 and partial[0].endswith(".part")
    before = (out / "train-000000.tar").read_bytes()
    assert not verify_export(out).ok  # no manifest: not an export yet

    result = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    assert verify_export(out).ok
    with db.session() as s:  # the killed run's job row no longer says running
        jobs = s.execute(select(Job.id, Job.status, Job.error).where(Job.kind == "export").order_by(Job.id)).all()
    assert [j.status for j in jobs] == ["failed", "succeeded"] and jobs[0].error.startswith("interrupted")
    assert jobs[1].id == result.job_id
    assert not [p for p in out.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert (out / "train-000000.tar").read_bytes() == before
    assert result.samples == 12


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import pixmo.export.wds as wds
    from pixmo.db.session import Database
    from pixmo.export import WebDatasetOptions
    from pixmo.storage import LocalStore

    pids = Path(sys.argv[4])

    def stuck(plan, **kwargs):  # in the forked workers
        (pids / str(os.getpid())).touch()
        time.sleep(120)

    wds.write_shard = stuck
    db = Database(sys.argv[1])
    store = LocalStore(sys.argv[2], secret="s", public_url="http://x")
    wds.export_webdataset(db, store, sys.argv[3], options=WebDatasetOptions(maxcount=2, val_fraction=0, workers=2))
    """
)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended, whoever reaps it


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_end_when_the_export_process_is_killed(demo, tmp_path):
    db, store = demo
    pids = tmp_path / "pids"
    pids.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, db.url, str(store.root), str(tmp_path / "out"), str(pids)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1],
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            workers = [int(p.name) for p in pids.iterdir()]
        assert len(workers) == 2, proc.stderr.read() if proc.poll() is not None else "workers did not start"
        proc.send_signal(signal.SIGKILL)  # the export only, as the OOM killer or kill -9 would
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_running(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _running(w)]
    finally:
        for w in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(w, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_a_worker_that_dies_is_a_clear_error_and_leaves_no_manifest(demo, tmp_path, monkeypatch):
    import pixmo.export.wds as wds
    from pixmo.export.errors import ExportError

    db, store = demo
    real = wds.write_shard

    def dies_on_the_second_shard(plan, **kwargs):  # runs in the forked workers
        if plan.index == 1:
            os._exit(1)
        return real(plan, **kwargs)

    monkeypatch.setattr(wds, "write_shard", dies_on_the_second_shard)
    with pytest.raises(ExportError, match="a worker process ended abruptly .* run it again"):
        export_webdataset(db, store, tmp_path / "out", options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=2))
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()
    with db.session() as s:
        job = s.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job.status == "failed" and "ended abruptly" in job.error


def test_workers_forked_under_the_progress_bar_write_to_the_real_stderr(demo, tmp_path, monkeypatch):
    """The bar (rich) replaces sys.stdout/stderr with stand-ins that write through its console; a
    worker forked while the bar drew inherited them, and with them a lock the drawing thread may have
    held: a warning in the worker could hang the export."""
    import pixmo.export.wds as wds

    db, store = demo
    real = wds.write_shard
    seen = tmp_path / "seen"

    def note_stdio(plan, **kwargs):  # runs in the forked workers
        with open(seen, "a") as f:
            f.write(f"{sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__}\n")
        return real(plan, **kwargs)

    monkeypatch.setattr(wds, "write_shard", note_stdio)
    export_webdataset(db, store, tmp_path / "out", options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=2),
                      progress=True)
    assert seen.read_text().split() == ["True"] * 3


def test_audio_and_resized_images(demo, tmp_path):
    db, store = demo
    out = tmp_path / "out"
    result = export_webdataset(db, store, out, options=WebDatasetOptions(max_side=100, with_audio=True, workers=1))
    report = verify_export(out)
    assert report.ok, [str(p) for p in report.problems]
    assert result.manifest["counts"]["audio_files"] == result.manifest["counts"]["recordings"] > 0
    assert result.manifest["counts"]["reencoded_images"] == 12
    from PIL import Image as PILImage
    import io

    for key, members in _samples(out).items():
        record = json.loads(members["json"])
        with PILImage.open(io.BytesIO(members[record["image"]["ext"]])) as im:
            assert max(im.size) == 100
        members_audio = sorted(k for k in members if k.startswith("audio"))
        assert members_audio == sorted(r["audio_member"].split(".", 1)[1] for r in record["recordings"])
        assert all(m.endswith(".ogg") for m in members_audio)


def test_shards_are_planned_with_the_size_of_a_converted_image_not_its_stored_one(db, store, tmp_path):
    """A compressed TIFF is written as PNG, which can be many times larger: planned by its stored
    size, shards overran --maxsize several times over."""
    import datetime as dt

    from PIL import Image as PILImage

    from pipelines.ingest import ingest_folder
    from pixmo.export.select import select_images

    folder = tmp_path / "in"
    folder.mkdir()
    PILImage.new("RGB", (300, 200), (10, 200, 30)).save(folder / "flat.tif", compression="tiff_lzw")
    PILImage.new("RGB", (300, 200), (10, 200, 30)).save(folder / "flat.png")
    assert ingest_folder(db, store, folder)["statuses"] == {"stored": 2}
    with db.session() as s:
        sizes = {mime: n for mime, n in s.execute(select(Image.mime, Image.bytes))}
        est = {c.key: c.est_bytes for c in select_images(s, ExportFilters(annotated_only=False),
                                                          as_of=dt.datetime.now(dt.timezone.utc))}
        by_mime = {mime: est[sha] for mime, sha in s.execute(select(Image.mime, Image.sha256))}
    assert sizes["image/tiff"] < 20_000 and by_mime["image/tiff"] >= 4 * 300 * 200  # as PNG, at most RGBA
    assert by_mime["image/png"] < sizes["image/png"] + 10_000  # kept as it is: its own size


@pytest.mark.parametrize("max_side", [None, 8])
def test_formats_other_than_jpg_png_webp_become_png_in_any_mode(db, store, tmp_path, max_side):
    """TIFF's CMYK, YCbCr, 32-bit and float grey, a GIF palette with transparency, BMP: each is
    written as PNG (RGB, or RGBA where it has alpha; 16-bit grey as it is), verifies and loads."""
    import io

    from PIL import Image as PILImage

    from pipelines.ingest import ingest_folder

    folder = tmp_path / "in"
    folder.mkdir()
    made = {
        "cmyk.tif": PILImage.new("CMYK", (12, 10), (0, 255, 255, 0)),  # red in CMYK
        "ycc.tif": PILImage.new("RGB", (12, 10), (0, 0, 255)).convert("YCbCr"),
        "grey32.tif": PILImage.new("I", (12, 10), 70000),
        "float.tif": PILImage.new("F", (12, 10), 0.5),
        "grey16.tif": PILImage.new("I;16", (12, 10), 40000),
        "clear.gif": PILImage.new("P", (12, 10), 0),
        "plain.bmp": PILImage.new("RGB", (12, 10), (0, 255, 0)),
    }
    for name, im in made.items():
        im.save(folder / name, **({"transparency": 0} if name.endswith(".gif") else {}))
    assert ingest_folder(db, store, folder)["statuses"] == {"stored": len(made)}
    out = tmp_path / "out"
    result = export_webdataset(db, store, out, ExportFilters(annotated_only=False),
                               WebDatasetOptions(val_fraction=0, workers=1, max_side=max_side))
    assert result.samples == len(made) and result.manifest["counts"]["reencoded_images"] == len(made)
    report = verify_export(out)
    assert report.ok, [str(p) for p in report.problems]
    modes = {}
    for members in _samples(out).values():
        assert json.loads(members["json"])["image"]["ext"] == "png"
        with PILImage.open(io.BytesIO(members["png"])) as im:
            assert im.format == "PNG" and im.size == ((12, 10) if max_side is None else (8, 7))
            modes[im.mode] = modes.get(im.mode, 0) + 1
            if im.mode == "RGB" and im.getpixel((0, 0)) == (255, 0, 0):
                modes["red"] = 1
    assert modes == {"RGB": 5, "RGBA": 1, "I;16": 1, "red": 1}
    from pixmo.data import pixmo_loader

    assert len(list(pixmo_loader(out, num_workers=0, shuffle=0))) == len(made)


def test_an_image_that_cannot_be_written_fails_naming_it(demo, tmp_path, monkeypatch):
    import pixmo.export.shards as shards
    from pixmo.export.errors import ExportError

    db, store = demo

    def broken(*args, **kwargs):
        raise OSError("cannot write mode XYZ as PNG")

    monkeypatch.setattr(shards, "image_member", broken)
    with pytest.raises(ExportError, match=r"image [0-9a-f]{64}: cannot be written as (jpg|png): OSError: cannot write mode XYZ"):
        export_webdataset(db, store, tmp_path / "out", options=WebDatasetOptions(workers=1))
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


def test_progress_reports_each_shard_as_it_finishes_with_workers(demo, tmp_path, monkeypatch):
    """Every shard but the first waits (in its worker) until the first one has been reported: an
    exporter that reports only once all shards are done makes them wait out their deadline."""
    import pixmo.export.wds as wds

    db, store = demo
    reported, gates = tmp_path / "first-reported", tmp_path / "gates"
    gates.mkdir()
    real = wds.write_shard

    def gated(plan, **kwargs):  # runs in the forked workers, which inherit the patch
        if plan.index > 0:
            deadline = time.monotonic() + 15
            while not reported.exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            (gates / plan.name).write_text("reported" if reported.exists() else "deadline")
        return real(plan, **kwargs)

    monkeypatch.setattr(wds, "write_shard", gated)
    calls = []

    def progress(n):
        calls.append(n)
        reported.touch()

    result = export_webdataset(db, store, tmp_path / "out", options=WebDatasetOptions(maxcount=3, val_fraction=0, workers=2),
                               progress=progress)
    assert sum(calls) == result.samples == 12 and len(calls) == 4
    assert {p.read_text() for p in gates.iterdir()} == {"reported"} and len(list(gates.iterdir())) == 3


@pytest.mark.parametrize("max_side", [None, 150])
def test_exif_rotated_images_verify_and_load_as_displayed(demo, tmp_path, max_side):
    """Orientation 6 (turn 90° to display): the record holds the displayed size, as points are clicked;
    verify must compare against that, and a resized member (PNG too) must keep the orientation."""
    import io

    from PIL import Image as PILImage

    from pipelines.ingest import ingest_folder
    from pixmo.data import pixmo_dataset

    db, store = demo
    folder = tmp_path / "rotated"
    folder.mkdir()
    raw = PILImage.new("RGB", (200, 100), "white")  # stored 200 x 100, shown 100 x 200
    raw.paste((255, 0, 0), (0, 0, 40, 20))  # red at the stored top left: the shown top right
    exif = PILImage.Exif()
    exif[0x0112] = 6
    raw.save(folder / "rot.jpg", "JPEG", exif=exif.tobytes(), quality=95)
    raw.save(folder / "rot.png", "PNG", exif=exif.tobytes())
    assert ingest_folder(db, store, folder)["statuses"] == {"stored": 2}
    with db.session() as session:
        rotated = session.scalars(select(Image).where(Image.width == 100, Image.height == 200)).all()
        assert sorted(i.mime for i in rotated) == ["image/jpeg", "image/png"]
        keys = {i.sha256 for i in rotated}
        for image in rotated:  # clicked on the shown red block, top right
            session.add(PointSet(image_id=image.id, label="red block", points=[[0.9, 0.1]], method="pointing"))
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(val_fraction=0, workers=1, max_side=max_side))
    report = verify_export(out)
    assert report.ok, [str(p) for p in report.problems]
    seen = 0
    for sample in pixmo_dataset(out, shuffle=0, decode="pil"):
        if sample["__key__"] not in keys:
            continue
        seen += 1
        image = sample["image"]
        assert image.size == ((100, 200) if max_side is None else (75, 150))
        assert image.getpixel((int(0.9 * image.width), int(0.1 * image.height)))[1:] == (0, 0)  # red, where clicked
        with PILImage.open(io.BytesIO(_samples(out)[sample["__key__"]][sample["json"]["image"]["ext"]])) as member:
            assert member.getexif().get(0x0112) == 6
    assert seen == 2


def test_filters_select_images(demo, tmp_path):
    db, store = demo
    opts = WebDatasetOptions(val_fraction=0, workers=1)
    runs = iter(range(100))

    def export(**filters) -> dict[str, dict]:
        out = tmp_path / f"out{next(runs)}"
        export_webdataset(db, store, out, ExportFilters(**filters), opts)
        return {k: json.loads(m["json"]) for k, m in _samples(out).items()}

    everything = set(export())
    assert len(everything) == 12
    approved = export(review_status=("approved",))
    assert approved and set(approved) < everything
    assert {r["review_status"] for r in approved.values()} == {"approved"}
    assert set(export(projects=("demo-points",))) == everything
    assert export(until="2000-01-01") == {}
    assert export(since="2999-01-01") == {}
    assert set(export(since="2000-01-01")) == everything
    with db.session() as s:
        flagged_image = s.scalars(select(Recording.image_id).order_by(Recording.id)).first()
        rec_ids = select(Recording.id).where(Recording.image_id == flagged_image)
        s.execute(update(Transcript).where(Transcript.recording_id.in_(rec_ids)).values(flags=["too_short"]))
        flagged_sha = s.get(Image, flagged_image).sha256
    assert set(export(exclude_flags=("too_short",))) == everything - {flagged_sha}
    # --until sees projects as they were then: an image added to a project later is not in it
    with db.session() as s:
        cutoff = utcnow()
        late = Project(name="late", kind="caption", config={})
        s.add(late)
        s.flush()
        s.add(ProjectImage(project_id=late.id, image_id=flagged_image, created_at=cutoff))
    assert export(projects=("late",), until=cutoff.isoformat()) == {}
    now = export(projects=("late",))
    assert set(now) == {flagged_sha} and "late" in now[flagged_sha]["projects"]
    with pytest.raises(ValidationError, match="no project named"):
        export(projects=("nope",))


def test_a_write_in_flight_when_the_export_starts_is_waited_for(db, store, tmp_path, monkeypatch):
    """A review flushed before the snapshot time but committed after the selection used to be seen by
    the shard readers and not by the filter: an image flagged then was exported as approved."""
    import threading

    import pixmo.export.select as select_module

    create_demo(db, store, 6, seed=0, speech=False)
    approved = ExportFilters(review_status=("approved",))
    opts = WebDatasetOptions(val_fraction=0, workers=1)
    before = export_webdataset(db, store, tmp_path / "before", approved, opts)
    key = before.manifest["shards"][0]["first_key"]
    flushed = threading.Event()

    def flag_it(hold: float) -> None:
        with db.session() as s:
            image = s.scalars(select(Image).where(Image.sha256 == key)).one()
            s.add(Review(target_type="point_set", target_id=s.scalars(select(PointSet.id).where(
                PointSet.image_id == image.id)).first(), image_id=image.id, verdict="flagged", reason="late"))
            s.flush()
            flushed.set()
            time.sleep(hold)

    writer = threading.Thread(target=flag_it, args=(0.5,))
    writer.start()
    flushed.wait()
    result = export_webdataset(db, store, tmp_path / "after", approved, opts)
    writer.join()
    assert result.warnings == []
    records = [json.loads(m["json"]) for m in _samples(tmp_path / "after").values()]
    assert key not in {r["key"] for r in records} and {r["review_status"] for r in records} == {"approved"}
    assert result.samples == before.samples - 1

    # a writer that stays open past the wait: the export goes on and says so
    monkeypatch.setattr(select_module, "WRITERS_TIMEOUT_S", 0.2)
    flushed.clear()
    writer = threading.Thread(target=flag_it, args=(1.5,))
    writer.start()
    flushed.wait()
    late = export_webdataset(db, store, tmp_path / "late", options=opts)
    writer.join()
    if db.is_sqlite:  # one writer at a time: the export's own job row already waited for it
        assert late.warnings == []
    else:
        assert late.warnings and "still open after 0 s" in late.warnings[0]


def test_exported_files_get_the_mode_the_umask_gives(demo, tmp_path):
    """Others (a training job of another user) can read the export as they could any file the
    user writes; temporary files used to make every file private (0600)."""
    from pixmo.export import export_hf

    db, store = demo
    old = os.umask(0o022)
    try:
        export_webdataset(db, store, tmp_path / "out", options=WebDatasetOptions(maxcount=5, workers=2))
        export_hf(db, store, tmp_path / "hf", "points")
    finally:
        os.umask(old)
    files = [p for p in [*(tmp_path / "out").iterdir(), *(tmp_path / "hf").rglob("*")] if p.is_file()]
    assert len(files) > 4
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}


def test_export_to_s3_verifies_and_loads(demo, s3_server, monkeypatch):
    db, store = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/v1")
    url = f"s3://{bucket.bucket}/exports/v1"
    result = export_webdataset(db, store, url, options=WebDatasetOptions(maxcount=5, val_fraction=0, workers=2))
    keys = sorted(bucket.iter_keys())
    assert keys == [MANIFEST_NAME, "train-000000.tar", "train-000001.tar", "train-000002.tar"]
    report = verify_export(url)
    assert report.ok, [str(p) for p in report.problems]
    assert report.samples == result.samples == 12
    from pixmo import curation

    assert curation.read_manifest(url)["snapshot_id"] == result.snapshot_id  # what the dashboard shows
    assert curation.read_manifest(f"s3://{bucket.bucket}/no-such-export") is None
    # nothing there: a missing bucket is named as such, not taken for an unfinished export
    missing = verify_export(f"s3://{bucket.bucket}-missing/exports/v1")
    assert not missing.ok and f"bucket '{bucket.bucket}-missing' does not exist" in missing.problems[0].message
    unfinished = verify_export(f"s3://{bucket.bucket}/no-such-export")
    assert not unfinished.ok and "did not finish" in unfinished.problems[0].message

    from pixmo.data import pixmo_loader

    seen = [s["__key__"] for s in pixmo_loader(url, num_workers=0, shuffle=0, decode="bytes")]
    with db.session() as s:
        assert sorted(seen) == sorted(s.scalars(select(Image.sha256)))


def test_an_s3_export_removes_what_a_killed_run_left_in_its_local_staging_folder(demo, s3_server, monkeypatch):
    """Shards for S3 are written to a local temporary file first; a run killed with -9 left files of
    up to --maxsize in the system's temporary folder that nothing ever removed."""
    from pixmo.export import export_hf
    from pixmo.export.target import open_target

    db, store = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/staged")
    url = f"s3://{bucket.bucket}/exports/staged"
    staging = open_target(url)._staging_root()
    other = open_target(f"s3://{bucket.bucket}/exports/elsewhere")._staging_root()
    leftovers = {}
    for root, part in [(staging, "_"), (staging, "cap"), (other, "_")]:
        (root / part).mkdir(parents=True, exist_ok=True)
        leftovers[(root, part)] = root / part / ".pixmo-tmp-train-000000.tar.0123456789ab.part"
        leftovers[(root, part)].write_bytes(b"half a shard")
    export_webdataset(db, store, url, options=WebDatasetOptions(maxcount=5, val_fraction=0, workers=2))
    assert verify_export(url).ok
    # the shards' leftover is gone; an HF subset's and another place's are not this run's to remove
    assert [k for k, f in leftovers.items() if f.exists()] == [(staging, "cap"), (other, "_")]
    assert not list((staging / "_").iterdir())  # and the run's own temporary files were uploaded and removed
    export_hf(db, store, url, "cap")
    assert [k for k, f in leftovers.items() if f.exists()] == [(other, "_")]
    leftovers[(other, "_")].unlink()


def test_a_broken_s3_stream_is_a_problem_of_its_shard_not_a_crash(demo, s3_server, monkeypatch):
    """botocore's errors for a connection lost mid-stream are no OSError: verify used to stop with a
    traceback (other shards' problems lost) instead of reporting the shard."""
    from botocore.exceptions import ResponseStreamingError
    from botocore.response import StreamingBody

    db, store = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/broken")
    url = f"s3://{bucket.bucket}/exports/broken"
    export_webdataset(db, store, url, options=WebDatasetOptions(maxcount=5, val_fraction=0, workers=1))
    manifest_size = bucket.size(MANIFEST_NAME)
    assert min(bucket.size(f"train-00000{i}.tar") for i in range(3)) > manifest_size
    real_read = StreamingBody.read

    def read(self, amt=None):  # noqa: ANN001, ANN202 - every shard's stream breaks; the manifest's does not
        if self._content_length is not None and int(self._content_length) > manifest_size:
            raise ResponseStreamingError(error="Connection reset by peer")
        return real_read(self, amt)

    monkeypatch.setattr(StreamingBody, "read", read)
    report = verify_export(url)
    assert report.shards == 3 and not report.ok
    for i in range(3):
        broken = [p for p in report.problems if p.shard == f"train-00000{i}.tar"]
        assert broken and "the S3 stream broke off" in broken[0].message, [str(p) for p in report.problems]


def test_two_exports_into_one_s3_prefix_refuse_each_other(demo, s3_server, monkeypatch, tmp_path):
    """A bucket has no lock: the deployment's database holds the place while an export writes, so a
    second export there fails at once instead of deleting the first one's shards as leftovers."""
    from pixmo.config import get_settings
    from pixmo.errors import StorageError
    from pixmo.export import export_hf
    from pixmo.export.target import held_for_export, open_target

    db, store = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/held")
    url = f"s3://{bucket.bucket}/exports/held"
    target = open_target(url)
    with held_for_export(db, target):  # a whole export under way
        with pytest.raises(StorageError, match=f"another export is writing to {url} now"):
            export_webdataset(db, store, url, options=WebDatasetOptions(workers=1))
        with pytest.raises(StorageError, match="another export is writing"):
            export_hf(db, store, url, "cap")
    assert list(bucket.iter_keys()) == []  # the refused ones wrote nothing
    with held_for_export(db, target, "cap"):  # one HF subset under way: other subsets go on beside it
        export_hf(db, store, url, "points")
        with pytest.raises(StorageError, match=f"another export is writing to {url}/cap now"):
            export_hf(db, store, url, "cap")
        with pytest.raises(StorageError, match="another export is writing"):
            export_webdataset(db, store, url, options=WebDatasetOptions(workers=1))
    export_webdataset(db, store, url, options=WebDatasetOptions(workers=1))  # free again
    assert verify_export(url).ok
    # the place is held however its URL is spelled
    with held_for_export(db, open_target(f"s3://{bucket.bucket}//exports/held/")):
        with pytest.raises(StorageError, match="another export is writing"):
            export_webdataset(db, store, url, options=WebDatasetOptions(workers=1))
    # and however the endpoint is (127.0.0.1 here, localhost there: each took a hold of its own)
    from pixmo.storage import S3Store

    other = S3Store(bucket.bucket, "exports/held", s3_server.replace("127.0.0.1", "localhost"), "us-east-1")
    with held_for_export(db, open_target(other)):
        with pytest.raises(StorageError, match="another export is writing"):
            export_webdataset(db, store, url, options=WebDatasetOptions(workers=1))
    # a hold whose database lock lapsed (its PostgreSQL connection cut) stops the export before it
    # deletes or publishes anything: another export may hold the place by then
    from pixmo.db.session import NamedLock

    before = sorted(bucket.iter_keys())
    monkeypatch.setattr(NamedLock, "still_held", lambda self: False)
    with pytest.raises(StorageError, match="was lost"):
        export_webdataset(db, store, url, options=WebDatasetOptions(workers=1, maxcount=3))
    assert sorted(bucket.iter_keys()) == before and verify_export(url).ok
    # a folder is held by flock alone (machines sharing the database each have their own folder)
    with held_for_export(db, open_target(tmp_path / "out")) as hold:
        assert hold.locks == []


def test_an_s3_export_overlapping_an_s3_blob_store_is_refused(demo, s3_server, monkeypatch):
    from pixmo.config import get_settings
    from pixmo.errors import StorageError
    from pixmo.export.target import check_apart, open_target

    db, _ = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    get_settings.cache_clear()
    blobs = make_s3_store(s3_server, prefix="blobs")
    keys = sorted(blobs.iter_keys())
    for where in ("blobs", "blobs/exports/v1", ""):
        with pytest.raises(StorageError, match="overlaps the blob store"):
            export_webdataset(db, blobs, f"s3://{blobs.bucket}/{where}", options=WebDatasetOptions(workers=1))
    for elsewhere in (f"s3://{blobs.bucket}/blobs-exports", f"s3://{blobs.bucket}/exports", f"s3://{blobs.bucket}x/blobs"):
        check_apart(open_target(elsewhere), blobs)  # no error
    assert sorted(blobs.iter_keys()) == keys


def test_cli_export_then_verify(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIXMO_SECRET_KEY", SECRET)
    from pixmo.db.session import _databases

    runner = CliRunner()
    app = _cli_app()
    try:
        assert runner.invoke(app, ["init"]).exit_code == 0
        assert runner.invoke(app, ["demo", "--images", "5", "--no-speech"]).exit_code == 0
        res = runner.invoke(app, ["export", "webdataset", "out", "--maxcount", "2", "--val-fraction", "0", "--json"])
        assert res.exit_code == 0, res.output
        stats = json.loads(res.output)["stats"]
        assert stats["total"] == 5 and stats["shards"] == 3
        res = runner.invoke(app, ["verify", "out", "--json"])
        assert res.exit_code == 0 and json.loads(res.output)["ok"] is True
        res = runner.invoke(app, ["export", "webdataset", "out2", "--review-status", "nonsense"])
        assert res.exit_code == 2 and "unknown review status" in res.output
        # places that cannot hold an export, and sizes that are no size: one line each, exit 2, nothing lost
        (tmp_path / "a_file").write_text("keep me")
        for args, message in [
            (["export", "webdataset", "a_file"], "exists and is not a folder"),
            (["export", "webdataset", "a_file/sub"], "cannot create the folder"),
            (["export", "hf", "a_file/sub", "--subset", "cap"], "cannot create the folder"),
            (["export", "webdataset", ""], "no export location given"),
            (["export", "webdataset", "out3", "--maxsize", "1e400"], "not a size"),
            (["export", "webdataset", "out3", "--workers", "0"], "workers"),
            (["export", "webdataset", "out3", "--exclude-flag", "LOW_CONFIDENCE"], "is not a flag name"),
            (["verify", "gs://bucket/x"], "unsupported export location"),
            (["verify", "a_file"], "exists and is not a folder"),
        ]:
            res = runner.invoke(app, args)
            assert res.exit_code == 2 and message in " ".join(res.output.split()), (args, res.output)
            assert "Traceback" not in res.output and "warning" not in res.output
        assert (tmp_path / "a_file").read_text() == "keep me"
        assert not (tmp_path / "out3").exists()
        # a flag no step writes is most likely a typo: the export runs, and says so
        res = runner.invoke(app, ["export", "webdataset", "out4", "--exclude-flag", "too_fast", "--json"])
        assert res.exit_code == 0 and "no toolkit step writes the flag 'too_fast'" in " ".join(res.output.split())
        res = runner.invoke(app, ["export", "webdataset", "out5", "--exclude-flag", "wpm_outlier"])
        assert res.exit_code == 0 and "warning" not in res.output
        res = runner.invoke(app, ["export", "webdataset", "out5", "--since", "2999-01-01"])
        assert res.exit_code == 0 and "the filters selected no image" in " ".join(res.output.split())
        res = runner.invoke(app, ["export", "hf", "out6", "--subset", "cap", "--since", "2999-01-01"])
        assert res.exit_code == 0 and "the filters selected no row" in " ".join(res.output.split())
    finally:
        for database in _databases.values():
            database.dispose()
        _databases.clear()


@pytest.mark.parametrize("cmd", [["export"], ["export", "webdataset"], ["export", "hf"], ["verify"]])
def test_export_commands_have_help(cmd):
    result = CliRunner().invoke(_cli_app(), [*cmd, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_folder_failures_are_storage_errors_and_the_callers_own_errors_pass_through(demo, tmp_path):
    import contextlib
    import errno

    from pixmo.errors import StorageError
    from pixmo.export.target import LocalTarget

    target = LocalTarget(tmp_path / "t")
    with pytest.raises(OSError, match="not an image") as caught:  # e.g. a member that does not decode
        with target.writer("train-000000.tar"):
            raise OSError("not an image")
    assert not isinstance(caught.value, StorageError)
    assert not list((tmp_path / "t").iterdir())

    class NoRoom:  # a file whose writes fail as on a full disk
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    class Full(LocalTarget):
        @contextlib.contextmanager
        def writer(self, name):
            with super().writer(name):
                yield NoRoom()

    db, store = demo
    out = tmp_path / "out"
    with pytest.raises(StorageError, match="cannot write train-000000.tar in .*No space left on device"):
        export_webdataset(db, store, Full(out), options=WebDatasetOptions(val_fraction=0, workers=1))
    assert not (out / MANIFEST_NAME).exists() and not list(out.glob("*.tar")) and not list(out.glob(".pixmo-tmp-*"))


@pytest.mark.parametrize(("where", "message"), [("", "is inside the blob store"), ("exports/v1", "is inside the blob store"),
                                                ("..", "holds the blob store")])
def test_an_export_folder_inside_or_around_the_blob_store_is_refused(demo, where, message):
    from pixmo.errors import StorageError
    from pixmo.export import export_hf

    db, store = demo
    keys = sorted(store.iter_keys())
    out = store.root / where
    with pytest.raises(StorageError, match=message):
        export_webdataset(db, store, out, options=WebDatasetOptions(workers=1))
    with pytest.raises(StorageError, match=message):
        export_hf(db, store, out, "cap")
    assert sorted(store.iter_keys()) == keys


def test_an_empty_selection_gives_a_valid_empty_export(demo, tmp_path):
    db, store = demo
    result = export_webdataset(db, store, tmp_path / "out", ExportFilters(until="2000-01-01"),
                               WebDatasetOptions(workers=2))
    assert result.samples == 0 and result.manifest["shards"] == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MANIFEST_NAME]
    report = verify_export(tmp_path / "out")
    assert report.ok and report.samples == 0


def test_a_second_export_into_a_folder_being_written_fails_and_touches_nothing(demo, tmp_path):
    """Two exports into one folder at once: the second is refused before it deletes anything (it would
    otherwise remove the first one's temporary files and manifest as leftovers); HF subsets into that
    folder wait their turn too, while different subsets may be written side by side."""
    import threading

    from pixmo.db.models import Job
    from pixmo.errors import StorageError
    from pixmo.export import export_hf

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=2, workers=1))
    before = _files(out)
    started, go, errors = threading.Event(), threading.Event(), []

    def slow_progress(_n: int) -> None:
        started.set()
        go.wait(30)

    def first() -> None:
        try:
            export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=2, workers=1), progress=slow_progress)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert started.wait(30), "the first export never wrote a sample"
        for second in (
            lambda: export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=3, workers=1)),
            lambda: export_hf(db, store, out, "cap"),
        ):
            with pytest.raises(StorageError, match="another export is writing to .*out now"):
                second()
        assert not (out / "cap").exists() or not any((out / "cap").iterdir())
    finally:
        go.set()
        thread.join(60)
    assert not errors, errors
    assert _files(out) == before  # the first run rewrote the same bytes; the refused ones removed nothing
    assert verify_export(out).ok
    with db.session() as s:
        failed = s.scalars(select(Job).where(Job.status == "failed")).all()
        assert sorted(j.kind for j in failed) == ["export", "export-hf-cap"]
        assert all("another export is writing" in j.error for j in failed)

    # HF subsets: one subset at a time, different subsets side by side
    from pixmo.export.target import open_target

    target = open_target(tmp_path / "hf")
    with target.writing("cap"):
        with pytest.raises(StorageError, match="another export is writing to .*cap now"):
            export_hf(db, store, tmp_path / "hf", "cap")
        export_hf(db, store, tmp_path / "hf", "points")
        with pytest.raises(StorageError, match="another export is writing to .*hf now"):
            export_webdataset(db, store, tmp_path / "hf")
    export_hf(db, store, tmp_path / "hf", "cap")
    assert list((tmp_path / "hf" / "cap").glob("*.parquet")) and list((tmp_path / "hf" / "points").glob("*.parquet"))


def test_temporary_files_of_subfolders_are_left_to_their_own_exports(demo, tmp_path):
    """Only an export's own (top-level) temporary files are its leftovers: an HF subset being written
    into the same folder, or another export into a subfolder, kept theirs until they were deleted
    from under them (and verify failed an intact export for them)."""
    from pixmo.export.target import open_target

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=3, workers=1))
    inner = open_target(out / "v1")
    with open_target(out).writing("cap"), inner.writing():
        f, hf_part = open_target(out).stage("cap/train-00000.parquet")
        f.close()
        f, inner_part = inner.stage("train-000000.tar")
        f.close()
        report = verify_export(out)
        assert report.ok, [str(p) for p in report.problems]
        (out / f"{TMP_PREFIX}train-000000.tar.killed.part").write_bytes(b"x")  # a killed run of this export's own
        assert [p.message for p in verify_export(out).problems] == ["leftover temporary file from an interrupted export"]
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=3, workers=1))
    assert os.path.exists(hf_part) and os.path.exists(inner_part)
    assert not (out / f"{TMP_PREFIX}train-000000.tar.killed.part").exists()


def test_a_refused_export_leaves_no_folder_behind(demo, tmp_path):
    db, store = demo
    with pytest.raises(ValidationError, match="no project named"):
        export_webdataset(db, store, tmp_path / "new" / "out", ExportFilters(projects=("nosuch",)))
    assert not (tmp_path / "new").exists()
    with pytest.raises(ValidationError, match="no project named"):
        from pixmo.export import export_hf

        export_hf(db, store, tmp_path / "new2", "cap", ExportFilters(projects=("nosuch",)))
    assert not (tmp_path / "new2").exists()


def test_shard_names_past_a_million_are_shard_names():
    from pixmo.export.manifest import SHARD_NAME_RE
    from pixmo.export.shards import shard_name

    assert SHARD_NAME_RE.match(shard_name("train", 1_000_000)) and SHARD_NAME_RE.match(shard_name("validation", 0))
    assert not SHARD_NAME_RE.match("train-00001.tar")


def test_the_manifest_counts_samples_per_project_and_the_funnel_reads_them(demo, tmp_path):
    """A whole-database export counted for no project in the dashboard's funnel ('exported' stayed
    0 after the README's loop): the manifest now says how many samples each project has."""
    from collections import Counter

    from pixmo import curation

    db, store = demo
    out = tmp_path / "out"
    result = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=3, workers=1))
    held = Counter(p for members in _samples(out).values() for p in json.loads(members["json"])["projects"])
    assert result.manifest["counts"]["projects"] == dict(sorted(held.items())) and len(held) >= 2
    assert verify_export(out).ok
    with db.session() as s:
        exported = {f.name: next(st.count for st in f.stages if st.name == "exported") for f in curation.funnel(s)}
    assert {name: exported[name] for name in held} == dict(held)


def test_a_refused_export_never_removes_the_folder_another_one_holds(tmp_path, monkeypatch):
    """Two exports start into one new folder at once: the refused one used to remove the folder (it
    had seen it missing), leaving the first one's lock on a deleted folder, so a third export got the
    lock on the new one while the first was still writing."""
    import threading

    import pixmo.export.target as target
    from pixmo.errors import StorageError

    out = tmp_path / "new" / "export"
    first_holds, second_done, outcome = threading.Event(), threading.Event(), {}
    real_flock = target._flock

    def late_flock(folder, shared):
        if threading.current_thread().name == "second":
            first_holds.wait(10)  # it saw the folder missing, then loses the race for the lock
        return real_flock(folder, shared)

    monkeypatch.setattr(target, "_flock", late_flock)

    def second():
        try:
            with target.LocalTarget(out).writing():
                outcome["second"] = "held"
        except StorageError as exc:
            outcome["second"] = str(exc)
        second_done.set()

    thread = threading.Thread(target=second, name="second")
    thread.start()
    time.sleep(0.2)
    with target.LocalTarget(out).writing():
        first_holds.set()
        second_done.wait(10)
        assert "another export is writing" in outcome["second"]
        assert out.is_dir()  # still there: the refused one removed nothing
        with pytest.raises(StorageError, match="another export is writing"):
            with target.LocalTarget(out).writing():  # a third one is refused too
                pass
    thread.join(10)


def test_export_workers_make_their_own_store_clients(demo, s3_server, monkeypatch):
    """Forked workers kept the parent's boto3 client, whose pooled keep-alive connections every
    worker then wrote to at once (moto closes each connection, so only a real server showed it:
    uploads crossed, failed, or went missing from an export that reported success)."""
    import datetime as dt

    from pixmo.export import wds
    from pixmo.export.target import open_target

    db, _ = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="exports/v2")
    target = open_target(f"s3://{bucket.bucket}/exports/v2")
    monkeypatch.setattr(wds, "_exit_with", lambda parent: None)  # no watcher thread in the test process
    wds._init_worker(os.getpid(), db.url, bucket, target, WebDatasetOptions(), dt.datetime.now(dt.timezone.utc))
    try:
        worker_store, worker_target = wds._worker["store"], wds._worker["target"]
        assert worker_store.client is not bucket.client and worker_target.store.client is not target.store.client
        assert (worker_store.bucket, worker_store.prefix) == (bucket.bucket, bucket.prefix)
    finally:
        wds._worker["db"].dispose()
        wds._worker.clear()


def test_an_export_does_not_delete_or_replace_files_it_did_not_write(demo, tmp_path):
    """A folder holding one's own train-000099.tar and manifest.json: the export deleted the one and
    replaced the other, exit 0, no word."""
    import io
    import tarfile

    from pixmo.export.errors import ExportError

    db, store = demo
    out = tmp_path / "mine"
    out.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("notes.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"notes"))
    (out / "train-000099.tar").write_bytes(buf.getvalue())
    (out / "manifest.json").write_text('{"mine": true}')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(ExportError, match="train-000099.tar, which no PixMo export wrote"):
        export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=5, workers=1))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "manifest.json").unlink()
    (out / "train-000099.tar").unlink()
    first = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=5, workers=1))
    (out / "manifest.json").unlink()  # as a run killed midway leaves it: PixMo shards, no manifest
    again = export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=5, workers=1))
    assert again.snapshot_id == first.snapshot_id


def test_file_urls_name_the_folder_they_say(tmp_path, monkeypatch):
    """file://localhost/srv/out and file:/srv/out were taken as folders below the working one."""
    from pixmo.errors import StorageError
    from pixmo.export.target import open_target

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "srv" / "out"
    for url in (f"file://localhost{out}", f"file:{out}", f"file://{out}", str(out)):
        assert Path(open_target(url).location("x.tar")) == out / "x.tar", url
    with pytest.raises(StorageError, match="unsupported export location"):
        open_target("gs://bucket/x")


def test_the_s3_staging_folder_must_be_this_users_and_private(tmp_path):
    """$TMPDIR/pixmo-staging-<uid> has a predictable name: made first by someone else (or open to
    others), they could swap a staged shard or manifest before it was uploaded."""
    from pixmo.errors import StorageError
    from pixmo.export.target import _own_private_dir

    fresh = tmp_path / "pixmo-staging-fresh"
    _own_private_dir(fresh)
    assert fresh.is_dir() and fresh.stat().st_mode & 0o777 == 0o700
    _own_private_dir(fresh)  # found again: fine
    opened = tmp_path / "pixmo-staging-opened"  # this user's, but open to others: closed again
    opened.mkdir()
    opened.chmod(0o777)
    _own_private_dir(opened)
    assert opened.stat().st_mode & 0o777 == 0o700
    link = tmp_path / "pixmo-staging-link"
    link.symlink_to(fresh)
    with pytest.raises(StorageError, match="not a private folder of this user"):
        _own_private_dir(link)
    if os.getuid() == 0:  # root: a folder another user made
        theirs = tmp_path / "pixmo-staging-theirs"
        theirs.mkdir()
        os.chown(theirs, 65534, 65534)
        with pytest.raises(StorageError, match="made by someone else"):
            _own_private_dir(theirs)


def test_images_ingest_allowed_under_a_raised_pixel_limit_verify_and_resize(demo, tmp_path, monkeypatch):
    """PIXMO_MAX_IMAGE_PIXELS applied to ingest alone: an image it let in failed `pixmo verify` and
    a resizing export (Pillow's own limit, here made small to stand for the default)."""
    from PIL import Image as PILImage

    from pixmo.config import get_settings

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=5, workers=1))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 500)  # the demo's images are far larger than 2 x 500
    monkeypatch.setenv("PIXMO_MAX_IMAGE_PIXELS", "100000000")
    get_settings.cache_clear()
    try:
        report = verify_export(out)
        assert report.ok, [str(p) for p in report.problems]
        export_webdataset(db, store, tmp_path / "small", options=WebDatasetOptions(maxcount=5, workers=1, max_side=32))
    finally:
        get_settings.cache_clear()


def test_verify_names_members_out_of_order_and_shards_that_overlap(demo, tmp_path):
    """A sample's members reordered, and two shards swapped in the manifest (checksums made right),
    passed verify."""
    import hashlib
    import io

    from pixmo.export.manifest import snapshot_id

    db, store = demo
    out = tmp_path / "out"
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    good = json.loads((out / MANIFEST_NAME).read_text())
    first = good["shards"][0]
    with tarfile.open(out / first["name"]) as tar:
        members = [(info, tar.extractfile(info).read()) for info in tar]
    key = members[0][0].name.split(".")[0]
    mine = [m for m in members if m[0].name.startswith(key)]
    reordered = list(reversed(mine)) + [m for m in members if not m[0].name.startswith(key)]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in reordered:
            tar.addfile(info, io.BytesIO(data))
    (out / first["name"]).write_bytes(buf.getvalue())
    manifest = json.loads(json.dumps(good))
    manifest["shards"][0].update(sha256=hashlib.sha256(buf.getvalue()).hexdigest(), bytes=len(buf.getvalue()))
    manifest["snapshot_id"] = snapshot_id(manifest)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    report = verify_export(out)
    assert [(p.shard, p.key) for p in report.problems] == [(first["name"], key)], [str(p) for p in report.problems]
    assert "members out of order" in report.problems[0].message

    (out / first["name"]).write_bytes(b"")  # back to the good export, then its first two shards swapped
    export_webdataset(db, store, out, options=WebDatasetOptions(maxcount=4, val_fraction=0, workers=1))
    swapped = json.loads(json.dumps(good))
    a, b = swapped["shards"][0], swapped["shards"][1]
    for field in ("sha256", "bytes", "samples", "first_key", "last_key"):
        a[field], b[field] = b[field], a[field]
    (out / a["name"]).rename(out / "swap.tmp")
    (out / b["name"]).rename(out / a["name"])
    (out / "swap.tmp").rename(out / b["name"])
    swapped["snapshot_id"] = snapshot_id(swapped)
    (out / MANIFEST_NAME).write_text(json.dumps(swapped))
    report = verify_export(out)
    assert any("does not begin after" in p.message for p in report.problems), [str(p) for p in report.problems]
