"""PixMo parquet export: exact column names and Arrow types per subset, values on the PixMo scales."""

from __future__ import annotations

import hashlib
import io

import pytest
from sqlalchemy import select

from pixmo.db.models import Image, PointSet, QAPair, Review
from pixmo.errors import ValidationError
from pixmo.export import export_hf
from pixmo.export.hf import HF_SUBSETS, split_point_explanation
from schemas.pixmo_hf import ROW_MODELS, arrow_schema
from tests.export_helpers import demo, demo_template  # noqa: F401
from tests.s3server import make_s3_store, s3_server  # noqa: F401

pd = pytest.importorskip("pandas")
pq = pytest.importorskip("pyarrow.parquet")

EXPLANATION = (
    'The <points x1="10.0" y1="20.0" x2="30.5" y2="40.0" alt="red circles">two circles</points> are left of '
    '<point x="50.0" y="60.0" alt="cup">the cup</point>.'
)


def _add_qa(db) -> None:
    with db.session() as s:
        image = s.scalars(select(Image).order_by(Image.sha256)).first()
        rows = [
            QAPair(image_id=image.id, source="ask", status="accepted", question="What colour is it?", answer="Red."),
            QAPair(image_id=image.id, source="ask", status="pending", question="Unanswered?", answer=""),
            QAPair(image_id=image.id, source="ask", status="accepted", question="Rejected later?", answer="No."),
            QAPair(image_id=image.id, source="point_explain", status="accepted", question="Where?", answer=EXPLANATION),
        ]
        s.add_all(rows)
        s.flush()
        s.add(Review(target_type="qa_pair", target_id=rows[2].id, image_id=image.id, verdict="rejected", reason="wrong"))


@pytest.mark.parametrize("subset", HF_SUBSETS)
def test_every_subset_has_exactly_the_pixmo_columns_and_types(demo, tmp_path, subset):
    db, store = demo
    _add_qa(db)
    result = export_hf(db, store, tmp_path / "hf", subset, rows_per_file=10)
    assert result.files and all(f["name"].startswith(f"{subset}/train-") for f in result.files)
    total = 0
    for f in result.files:
        path = tmp_path / "hf" / f["name"]
        schema = pq.read_schema(path).remove_metadata()
        assert schema.equals(arrow_schema(subset)), f"{schema}\n!=\n{arrow_schema(subset)}"
        frame = pd.read_parquet(path)
        assert list(frame.columns) == list(ROW_MODELS[subset].model_fields)
        assert len(frame) == f["rows"] <= 10
        data = path.read_bytes()  # the recorded checksum and size are those of the file as written
        assert (f["sha256"], f["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
        total += len(frame)
    assert total == result.rows


def test_row_values(demo, tmp_path):
    db, store = demo
    _add_qa(db)
    out = tmp_path / "hf"
    for subset in HF_SUBSETS:
        export_hf(db, store, out, subset)
    read = lambda subset: pq.read_table(out / subset / "train-00000.parquet").to_pylist()  # noqa: E731

    with db.session() as s:
        n_sets = len(s.scalars(select(PointSet)).all())
        counting = s.scalars(select(PointSet).where(PointSet.method == "counting")).all()
        sizes = {im.sha256: (im.width, im.height) for im in s.scalars(select(Image))}
        first = s.scalars(select(PointSet).where(PointSet.points != []).order_by(PointSet.id)).first()
        first_sha = s.get(Image, first.image_id).sha256
        first_points = [c for x, y in sorted(first.points) for c in (x * 100, y * 100)]

    points = read("points")
    assert len(points) == n_sets
    for row in points:
        assert row["count"] == len(row["points"])
        assert all(0 <= p["x"] <= 100 and 0 <= p["y"] <= 100 for p in row["points"])
        assert row["collection_method"] in ("pointing", "counting")
        assert row["image_url"].startswith("http://testserver/blobs/sha256/")
    match = next(r for r in points if r["image_sha256"] == first_sha and r["label"] == first.label)
    assert [c for p in sorted(match["points"], key=lambda p: (p["x"], p["y"])) for c in (p["x"], p["y"])] == pytest.approx(first_points)

    count = read("count")
    assert len(count) == len(counting) > 0
    for row in count:
        width, height = sizes[row["image_sha256"]]
        assert row["count"] == len(row["points"]["x"]) == len(row["points"]["y"]) > 1
        assert all(0 <= x <= width for x in row["points"]["x"]) and any(x > 1 for x in row["points"]["x"])

    cap = read("cap")
    assert cap and all(r["caption"] and isinstance(r["transcripts"], list) for r in cap)
    assert any(len(r["transcripts"]) == 2 for r in cap)

    capqa = read("capqa")
    assert capqa and all(r["messages"] == [r["question"], r["answer"]] for r in capqa)

    ama = [(r["question"], r["answer"]) for r in read("ama")]
    assert ("What colour is it?", "Red.") in ama and ("Rejected later?", "No.") not in ama
    assert ("Unanswered?", "") not in ama and len(ama) > 1  # the demo's own exchanges too
    explanations = read("point_explanations")
    assert len(explanations) > 1 and all(r["parsed_response"] and r["points"] for r in explanations)
    [pe] = [r for r in explanations if r["response"] == EXPLANATION]
    assert pe["response"] == EXPLANATION
    assert pe["parsed_response"] == "The <|POINT|> are left of <|POINT|>."
    assert pe["alt_text"] == ["red circles", "cup"] and pe["inline_text"] == ["two circles", "the cup"]
    assert pe["points"] == [[[10.0, 20.0], [30.5, 40.0]], [[50.0, 60.0]]]


def test_malformed_point_element_gives_no_parsed_response():
    parsed = split_point_explanation('See <point x="500" y="1" alt="a">a</point>.')
    assert parsed["parsed_response"] is None and parsed["points"] == []


def test_unknown_subset_is_refused(demo, tmp_path):
    db, store = demo
    with pytest.raises(ValidationError, match="unknown subset"):
        export_hf(db, store, tmp_path, "nope")


def test_an_empty_subset_still_gets_a_file_with_the_schema(demo, tmp_path):
    db, store = demo
    from pixmo.export import ExportFilters

    result = export_hf(db, store, tmp_path / "hf", "cap", ExportFilters(until="2000-01-01"))
    assert result.rows == 0 and [f["rows"] for f in result.files] == [0]
    path = tmp_path / "hf" / result.files[0]["name"]
    assert pq.read_schema(path).remove_metadata().equals(arrow_schema("cap"))


def test_a_failed_export_keeps_the_previous_files(demo, tmp_path, monkeypatch):
    db, store = demo
    out = tmp_path / "hf"
    first = export_hf(db, store, out, "cap", rows_per_file=2)
    before = {f["name"]: (out / f["name"]).read_bytes() for f in first.files}
    assert len(before) > 1

    def broken(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr("pixmo.export.hf.build_samples", broken)
    with pytest.raises(RuntimeError, match="database went away"):
        export_hf(db, store, out, "cap", rows_per_file=2)
    assert {name: (out / name).read_bytes() for name in before} == before


def test_a_rerun_that_fails_midway_leaves_the_previous_files_whole(demo, tmp_path, monkeypatch):
    import pixmo.export.hf as hf

    db, store = demo
    out = tmp_path / "hf"
    first = export_hf(db, store, out, "points", rows_per_file=2)
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert len(before) == len(first.files) > 3
    (out / "points" / ".pixmo-tmp-train-00000.parquet.abc.part").write_bytes(b"a killed run's")

    real, calls = hf.rows_to_table, []

    def fails_on_the_third_file(subset, rows):
        calls.append(len(rows))
        if len(calls) == 3:
            raise RuntimeError("database went away")
        return real(subset, rows)

    monkeypatch.setattr(hf, "rows_to_table", fails_on_the_third_file)
    with pytest.raises(RuntimeError, match="database went away"):
        export_hf(db, store, out, "points", rows_per_file=3)  # two new files were complete by then
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the killed run's leftover is gone too, and nothing of this run is left


def test_a_failure_while_publishing_says_which_files_are_new(demo, tmp_path):
    from pixmo.errors import StorageError
    from pixmo.export.target import LocalTarget

    class FailsOnSecond(LocalTarget):
        published = 0

        def publish(self, path, name):
            if self.published == 1:
                raise StorageError(f"cannot write {name}: gone")
            super().publish(path, name)
            self.published += 1

    db, store = demo
    out = tmp_path / "hf"
    with pytest.raises(StorageError, match="cannot write points/train-00001.parquet") as failure:
        export_hf(db, store, FailsOnSecond(out), "points", rows_per_file=2)
    assert failure.value.__notes__ == [
        "the first 1 file(s) of points/ are this export's, the others the previous one's: run the export again"]
    assert sorted(p.name for p in (out / "points").iterdir()) == ["train-00000.parquet"]


def test_an_image_with_transcripts_but_no_usable_caption_gives_no_cap_row(demo, tmp_path):
    from pixmo.db.models import Caption

    db, store = demo
    with db.session() as s:
        image_id = s.scalars(select(Caption.image_id).order_by(Caption.id)).first()
        sha = s.get(Image, image_id).sha256
        for caption in s.scalars(select(Caption).where(Caption.image_id == image_id)):
            s.add(Review(target_type="caption", target_id=caption.id, image_id=image_id, verdict="rejected", reason="x"))
    export_hf(db, store, tmp_path / "hf", "cap")
    rows = pq.read_table(tmp_path / "hf" / "cap" / "train-00000.parquet").to_pylist()
    with db.session() as s:
        urls = {store.url(im.storage_key).split("?")[0]: im.sha256 for im in s.scalars(select(Image))}
    exported = {urls[r["image_url"].split("?")[0]] for r in rows}
    assert rows and sha not in exported


def test_export_to_s3_records_the_checksums_of_the_uploaded_files(demo, s3_server, monkeypatch):
    db, store = demo
    monkeypatch.setenv("PIXMO_S3_ENDPOINT_URL", s3_server)
    from pixmo.config import get_settings

    get_settings.cache_clear()
    bucket = make_s3_store(s3_server, prefix="hf")
    result = export_hf(db, store, f"s3://{bucket.bucket}/hf", "points", rows_per_file=10)
    assert sorted(bucket.iter_keys()) == sorted(f["name"] for f in result.files)
    for f in result.files:
        data = bucket.get_bytes(f["name"])
        assert (f["sha256"], f["bytes"]) == (hashlib.sha256(data).hexdigest(), len(data))
        assert len(pq.read_table(io.BytesIO(data))) == f["rows"]


def test_a_place_that_cannot_be_written_fails_clearly_and_the_job_says_so(demo, tmp_path):
    from pixmo.db.models import Job
    from pixmo.errors import StorageError

    db, store = demo
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(StorageError, match="cannot create the folder .*a_file/sub: Not a directory"):
        export_hf(db, store, tmp_path / "a_file" / "sub", "cap")
    with db.session() as s:
        job = s.scalars(select(Job).order_by(Job.id.desc())).first()
        assert job.kind == "export-hf-cap" and job.status == "failed" and "cannot create" in job.error
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_a_full_disk_midway_is_a_storage_error_naming_the_file(demo, tmp_path):
    import errno

    from pixmo.errors import StorageError
    from pixmo.export.target import LocalTarget

    class FullAfter:
        def __init__(self, f, room):
            self.f, self.room = f, room

        def write(self, data):
            self.room -= len(data)
            if self.room < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    class FullDisk(LocalTarget):
        def stage(self, name):
            f, path = super().stage(name)
            return FullAfter(f, 64), path

    db, store = demo
    out = tmp_path / "out"
    with pytest.raises(StorageError, match="cannot write cap/train-00000.parquet in .*No space left on device"):
        export_hf(db, store, FullDisk(out), "cap")
    assert not list(out.rglob("*.parquet")) and not list(out.rglob(".pixmo-tmp-*"))


def test_image_urls_signed_by_this_installation_are_said_to_expire_and_to_be_local(demo, tmp_path):
    """Images ingested from a folder have no source URL: their rows held links to 127.0.0.1:8000 (the
    default public URL) that expire in a week, and nothing said so."""
    from pixmo.storage import LocalStore

    db, store = demo
    local = LocalStore(store.root, secret="test-secret-for-signing", public_url="http://127.0.0.1:8000")
    result = export_hf(db, local, tmp_path / "hf", "points")
    (warning,) = [w for w in result.warnings if "signed link" in w]
    assert "valid until" in warning and "other machines do not reach" in warning and "PIXMO_PUBLIC_URL" in warning
    urls = {r["image_url"] for r in pq.read_table(tmp_path / "hf/points/train-00000.parquet").to_pylist()}
    assert all(u.startswith("http://127.0.0.1:8000/blobs/") for u in urls)
    public = LocalStore(store.root, secret="test-secret-for-signing", public_url="https://pixmo.example.org")
    hosted = export_hf(db, public, tmp_path / "hf2", "points")  # a public address: they expire, that is all
    (warning,) = [w for w in hosted.warnings if "signed link" in w]
    assert "valid until" in warning and "PIXMO_PUBLIC_URL" not in warning
    with db.session() as s:  # with source URLs for every image, nothing to say
        for image in s.scalars(select(Image)):
            image.source_url = f"https://example.org/{image.sha256}.jpg"
    again = export_hf(db, local, tmp_path / "hf3", "points")
    assert not [w for w in again.warnings if "signed link" in w]


def test_a_project_filter_keeps_the_rows_of_that_project(demo, tmp_path):
    """The filter picked images, then every point set and QA pair on them was written, whatever project
    it was made in: `--subset points --project demo-captions` wrote demo-points' point sets."""
    from pixmo.demo import ASK_PROJECT, CAPTION_PROJECT, POINTS_PROJECT
    from pixmo.export.options import ExportFilters

    db, store = demo
    rows = lambda subset, *projects: export_hf(  # noqa: E731
        db, store, tmp_path / "-".join(projects or ("all",)), subset, ExportFilters(projects=projects)).rows
    everything = rows("points")
    assert everything > 0 and rows("points", POINTS_PROJECT) == everything
    assert rows("points", CAPTION_PROJECT) == 0
    asked = rows("ama")
    assert asked > 0 and rows("ama", ASK_PROJECT) == asked and rows("ama", POINTS_PROJECT) == 0
    assert rows("capqa", CAPTION_PROJECT) == rows("capqa") > 0  # written from the project's captions


def test_links_signed_for_an_s3_host_other_machines_do_not_reach_are_warned_of():
    """The warning read the local store's public URL only: S3 links signed for compose's minio:9000
    or localhost:9000 went unremarked."""
    from pixmo.export.hf import _signed_url_warning
    from pixmo.storage import S3Store

    for endpoint, public in (("http://minio:9000", None), ("http://minio:9000", "http://localhost:9000")):
        warning = _signed_url_warning(S3Store("b", "", endpoint, "us-east-1", public), 3, 3600)
        assert "other machines do not reach" in warning and "PIXMO_S3_PUBLIC_ENDPOINT_URL" in warning
    reachable = _signed_url_warning(S3Store("b", "", "http://minio:9000", "us-east-1", "https://s3.example.org"), 3, 3600)
    assert "valid until" in reachable and "do not reach" not in reachable
