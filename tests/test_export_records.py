"""The rules shared by the exporters: best caption, review status, split, shard planning, sizes, records."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json

import pytest
from sqlalchemy import select

from pixmo.db.models import Image, PointSet, Transcript
from pixmo.errors import ValidationError
from pixmo.export import export_webdataset
from pixmo.export.errors import ExportError
from pixmo.export.options import ExportFilters, WebDatasetOptions, parse_size, parse_time
from pixmo.export.records import (
    ImageRows,
    best_caption,
    build_sample,
    latest_verdicts,
    load_rows,
    load_usernames,
    review_status,
    split_of,
)
from pixmo.export.select import Candidate
from pixmo.export.shards import plan_shards
from schemas.export import ExportSample
from tests.export_helpers import DEMO_IMAGES, demo, demo_template  # noqa: F401

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _caption(id_, kind="cleaned", producer="llm", text=None, sources=(1,)):
    return {"id": id_, "kind": kind, "produced_by": producer, "text": text or f"caption {id_}",
            "source_transcript_ids": list(sources)}


def _review(id_, target, target_id, verdict, minutes=0):
    return {"id": id_, "target_type": target, "target_id": target_id, "verdict": verdict,
            "created_at": T0 + dt.timedelta(minutes=minutes)}


def _rows(captions=(), transcripts=None, reviews=()):
    transcripts = transcripts if transcripts is not None else [
        {"id": 1, "recording_id": 10, "text": "first transcript"},
        {"id": 2, "recording_id": 20, "text": "a longer second transcript"},
    ]
    return ImageRows(image={}, captions=list(captions), transcripts=transcripts, reviews=list(reviews))


def test_best_caption_prefers_merged_then_human_then_llm_then_rule_then_newest():
    assert best_caption(_rows([_caption(1, "merged", "rule"), _caption(2, "cleaned", "human")])) == "caption 1"
    assert best_caption(_rows([_caption(1, producer="rule"), _caption(2, producer="llm"), _caption(3, producer="human")])) == "caption 3"
    assert best_caption(_rows([_caption(3, producer="llm"), _caption(1, producer="rule")])) == "caption 3"
    assert best_caption(_rows([_caption(1), _caption(2)])) == "caption 2"


def test_best_caption_skips_reviewed_out_captions_and_sources():
    captions = [_caption(1, "merged", sources=(1, 2)), _caption(2, sources=(1,))]
    # the merged caption was written from recording 20's transcript, which a reviewer rejected
    assert best_caption(_rows(captions, reviews=[_review(1, "recording", 20, "rejected")])) == "caption 2"
    # a rejected caption is never used, even when it was approved before
    reviews = [_review(1, "caption", 1, "approved", 0), _review(2, "caption", 1, "rejected", 5)]
    assert best_caption(_rows(captions, reviews=reviews)) == "caption 2"
    # no usable caption: the longest usable transcript
    reviews = [_review(1, "caption", 1, "rejected"), _review(2, "caption", 2, "flagged")]
    assert best_caption(_rows(captions, reviews=reviews)) == "a longer second transcript"
    everything_rejected = [_review(1, "recording", 10, "rejected"), _review(2, "recording", 20, "rejected")]
    assert best_caption(_rows(captions, reviews=everything_rejected)) == ""


def test_a_recording_transcribed_by_two_models_is_one_transcript_of_the_sample():
    """Each usable transcript used to count: a recording transcribed again by a better model gave
    PixMo-Cap's `transcripts` and the loader's targets the same speech twice, and the weaker text
    could win the `.txt` fallback."""
    from pixmo.data import molmo_targets
    from pixmo.verdicts import newest_per_recording, usable_transcripts

    transcripts = [
        {"id": 1, "recording_id": 10, "text": "an old and much longer transcript by a weak model"},
        {"id": 2, "recording_id": 20, "text": "second recording"},
        {"id": 3, "recording_id": 10, "text": "newer transcript"},
    ]
    assert [t["id"] for t in newest_per_recording(transcripts)] == [2, 3]
    assert best_caption(_rows(transcripts=transcripts)) == "second recording"  # the longest of the newest
    # a rejected newer transcript gives its recording back to the older one
    verdicts = {("transcript", 3): "rejected"}
    assert [t["id"] for t in newest_per_recording(usable_transcripts(transcripts, verdicts))] == [1, 2]
    record = {"transcripts": transcripts, "reviews": [], "point_sets": [], "qa": []}
    assert [t["text"] for t in molmo_targets(record) if t["task"] == "transcript"] == ["second recording", "newer transcript"]


def test_a_txt_that_fell_back_to_a_transcript_is_no_caption_target():
    """With no usable caption the .txt is the longest transcript: the loader trained on that speech
    under the caption prompt, and again as a transcript target."""
    from pixmo.data import molmo_targets

    record = {"captions": [{"id": 3, "text": "A red circle.", "source_transcript_ids": [1]}],
              "transcripts": [{"id": 1, "recording_id": 10, "text": "okay so a red circle"}],
              "reviews": [], "point_sets": [], "qa": []}
    tasks = lambda caption: [(t["task"], t["text"]) for t in molmo_targets(record, caption)]  # noqa: E731
    assert tasks("A red circle.") == [("caption", "A red circle."), ("transcript", "okay so a red circle")]
    record["reviews"] = [_review(1, "caption", 3, "rejected")]  # now the .txt is the transcript
    assert tasks("okay so a red circle") == [("transcript", "okay so a red circle")]


def test_capqa_written_from_a_rejected_caption_is_not_trained_on():
    """The rule for captions written from rejected transcripts, one step on: a CapQA pair inherits
    its caption's rejection. An ask answer only grounded in that caption was accepted by a person."""
    from pixmo.data import molmo_targets

    qa = [{"id": 1, "source": "capqa", "status": "accepted", "caption_id": 7, "question": "q1?", "answer": "a1"},
          {"id": 2, "source": "capqa", "status": "accepted", "caption_id": 8, "question": "q2?", "answer": "a2"},
          {"id": 3, "source": "ask", "status": "accepted", "caption_id": 7, "question": "q3?", "answer": "a3"},
          {"id": 4, "source": "capqa", "status": "accepted", "question": "q4?", "answer": "a4"}]  # schema 1: no caption_id
    record = {"transcripts": [], "point_sets": [], "qa": qa,
              "reviews": [_review(1, "caption", 7, "rejected"), _review(2, "caption", 8, "approved")]}
    assert [t["prompt"] for t in molmo_targets(record) if t["task"] in ("capqa", "ask")] == ["q2?", "q3?", "q4?"]
    # one step further back: caption 8 was written from a transcript whose recording is rejected
    record["captions"] = [{"id": 8, "source_transcript_ids": [5]}]
    record["transcripts"] = [{"id": 5, "recording_id": 50, "text": "a dog"}]
    record["reviews"].append(_review(3, "recording", 50, "rejected", minutes=1))
    assert [t["prompt"] for t in molmo_targets(record) if t["task"] in ("capqa", "ask")] == ["q3?", "q4?"]


def test_review_status_uses_the_latest_verdict_per_row():
    assert review_status(latest_verdicts([])) == "pending"
    assert review_status(latest_verdicts([_review(1, "recording", 1, "rejected")])) == "rejected"
    assert review_status(latest_verdicts([_review(1, "recording", 1, "rejected"), _review(2, "recording", 2, "approved")])) == "approved"
    assert review_status(latest_verdicts([_review(1, "recording", 1, "approved"), _review(2, "caption", 2, "flagged")])) == "flagged"
    later_approval = [_review(2, "recording", 1, "approved", 10), _review(1, "recording", 1, "rejected", 0)]
    assert review_status(latest_verdicts(later_approval)) == "approved"


def test_split_is_a_stable_hash_of_the_key():
    keys = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(4000)]
    splits = [split_of(k, 0.1) for k in keys]
    assert splits == [split_of(k, 0.1) for k in keys]
    assert 300 < splits.count("validation") < 500
    assert {split_of(k, 0.0) for k in keys} == {"train"}
    # growing the fraction only moves samples into validation
    assert all(split_of(k, 0.2) == "validation" for k, s in zip(keys, splits) if s == "validation")


def test_plan_shards_by_count_and_estimated_size():
    cands = [Candidate(i, f"{i:064x}", 1000) for i in range(10)]
    plans = plan_shards(cands, maxcount=4, maxsize=10**9, val_fraction=0)
    assert [p.samples for p in plans] == [4, 4, 2]
    assert [p.name for p in plans] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert plans[0].first_key == cands[0].key and plans[-1].last_key == cands[-1].key
    assert [p.samples for p in plan_shards(cands, maxcount=100, maxsize=2500, val_fraction=0)] == [2] * 5
    big = [Candidate(99, "f" * 64, 10_000)]  # larger than maxsize: a shard of its own
    assert [p.samples for p in plan_shards(cands[:2] + big, maxcount=100, maxsize=2500, val_fraction=0)] == [2, 1]
    both = plan_shards(cands, maxcount=100, maxsize=10**9, val_fraction=0.5)
    assert {p.split for p in both} == {"train", "validation"}
    assert sum(p.samples for p in both) == 10


def test_options_and_filters_refuse_bad_values():
    assert parse_size("1G") == 10**9 and parse_size("64MiB") == 64 * 2**20 and parse_size("3e9") == 3 * 10**9
    assert parse_time("2024-06-01") == dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc)
    assert parse_time("2024-06-01T12:00+02:00").hour == 10
    for bad in [dict(maxcount=0), dict(maxsize="lots"), dict(maxsize="1e400"), dict(maxsize="1e999M"),
                dict(maxsize=float("inf")), dict(maxsize=float("nan")), dict(val_fraction=1.0), dict(max_side=2),
                dict(workers=0)]:
        with pytest.raises(ValidationError):
            WebDatasetOptions(**bad)
    with pytest.raises(ValidationError, match="unknown review status"):
        ExportFilters(review_status=("good",))
    with pytest.raises(ValidationError, match="before"):
        ExportFilters(since="2024-02-01", until="2024-01-01")
    with pytest.raises(ValidationError, match="ISO"):
        ExportFilters(since="yesterday")
    # a plain string is one name, not its letters (which passed every check and excluded nothing)
    one = ExportFilters(projects="demo", review_status="approved", exclude_flags="wpm_outlier")
    assert (one.projects, one.review_status, one.exclude_flags) == (("demo",), ("approved",), ("wpm_outlier",))


# ----------------------------------------------------------------------------- built records


def _demo_rows(db):
    with db.session() as session:
        ids = [i for (i,) in session.execute(select(Image.id).order_by(Image.id))]
        return load_rows(session, ids), load_usernames(session)


@pytest.mark.parametrize("with_audio", [False, True])
def test_built_record_is_exactly_the_validated_model(demo, with_audio):
    """The record is built as a plain dict for speed; its JSON must be what the pydantic model writes."""
    db, _ = demo
    rows, usernames = _demo_rows(db)
    assert len(rows) == DEMO_IMAGES
    for r in rows.values():
        built = build_sample(r, usernames, val_fraction=0.25, with_audio=with_audio)
        assert ExportSample.model_validate_json(built.json_bytes).model_dump_json().encode() == built.json_bytes
        assert built.record.model_dump_json().encode() == built.json_bytes
    # values the database may hand back in another type are written as the model's type
    r = next(r for r in rows.values() if r.transcripts and r.recordings)
    odd = dataclasses.replace(
        r,
        recordings=[{**x, "duration_s": 60} for x in r.recordings],
        transcripts=[{**x, "duration_s": 60, "metrics": {"z": 1, "a": {"y": 2, "b": float("inf")}, "n": -0.0, "e": 1e-7}}
                     for x in r.transcripts],
        point_sets=[{**p, "points": [[0, 1], ["0.25", 0.5], [-0.0, 1e-300]], "not_present": 0} for p in r.point_sets[:1]],
        captions=[{**c, "faithfulness": {"score": float("nan")}} for c in r.captions],
    )
    built = build_sample(odd, usernames, val_fraction=0.25, with_audio=with_audio)
    assert ExportSample.model_validate(built.data).model_dump_json().encode() == built.json_bytes

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    json.loads(built.json_bytes, parse_constant=refuse)  # inf and NaN are written as null, as the model does
    assert b'"duration_s":60.0' in built.json_bytes and b'"points":[[0.0,1.0],[0.25,0.5],[-0.0,1e-300]]' in built.json_bytes
    assert b'"b":null' in built.json_bytes and b'"faithfulness":null' in built.json_bytes
    # what orjson refuses (an integer beyond 64 bits) is written by pydantic-core, still as the model writes it
    huge = dataclasses.replace(odd, transcripts=[{**x, "metrics": {"n": 2**70, "t": "é\u2028\x00"}} for x in odd.transcripts])
    built = build_sample(huge, usernames, val_fraction=0.25, with_audio=with_audio)
    assert ExportSample.model_validate(built.data).model_dump_json().encode() == built.json_bytes
    assert b'"n":1180591620717411303424' in built.json_bytes


def test_stored_json_beyond_strict_json_reads_back_as_python_json_wrote_it(demo):
    """Metrics are stored by Python's json (NaN, Infinity, big integers); the fast reader must read them the same."""
    db, _ = demo
    metrics = {"nan": float("nan"), "inf": float("inf"), "big": 2**70, "text": "é", "plain": 0.1}
    with db.session() as session:
        transcript = session.scalars(select(Transcript).where(Transcript.status == "ok")).first()
        transcript.metrics = metrics
        transcript_id = transcript.id
    rows, usernames = _demo_rows(db)
    row = next(r for r in rows.values() if any(t["id"] == transcript_id for t in r.transcripts))
    read = next(t for t in row.transcripts if t["id"] == transcript_id)["metrics"]
    assert read["big"] == 2**70 and read["text"] == "é" and read["plain"] == 0.1 and read["inf"] == float("inf")
    assert read["nan"] != read["nan"]
    built = build_sample(row, usernames, val_fraction=0.0, with_audio=False)
    assert b'"inf":null' in built.json_bytes and b'"nan":null' in built.json_bytes and b'"big":1180591620717411303424' in built.json_bytes
    # each on its own too: a text that strict JSON allows must not lose what json.loads keeps
    for alone in ({"big": 2**70}, {"small": -(2**63) - 1}, {"u64": 2**64 - 1}, {"x": 0.1}):
        with db.session() as session:
            session.get(Transcript, transcript_id).metrics = alone
        rows, usernames = _demo_rows(db)
        row = next(r for r in rows.values() if any(t["id"] == transcript_id for t in r.transcripts))
        read = next(t for t in row.transcripts if t["id"] == transcript_id)["metrics"]
        assert read == alone and [type(v) for v in read.values()] == [type(v) for v in alone.values()]
        built = build_sample(row, usernames, val_fraction=0.0, with_audio=False)
        assert json.dumps(alone, separators=(",", ":")).encode() in built.json_bytes
    # a text JSON can hold but UTF-8 cannot (a lone surrogate) is read back, and refused when written
    with db.session() as session:
        session.get(Transcript, transcript_id).metrics = {"text": "\ud800"}
    rows, usernames = _demo_rows(db)
    row = next(r for r in rows.values() if any(t["id"] == transcript_id for t in r.transcripts))
    assert next(t for t in row.transcripts if t["id"] == transcript_id)["metrics"] == {"text": "\ud800"}
    with pytest.raises(ExportError, match=f"image {row.image['sha256']}: the record cannot be written as JSON"):
        build_sample(row, usernames, val_fraction=0.0, with_audio=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: {"point_sets": [{**r.point_sets[0], "points": [[1.5, 0.2]], "not_present": False}]}, "point set .*1.5"),
        (lambda r: {"point_sets": [{**r.point_sets[0], "points": [[float("nan"), 0.2]], "not_present": False}]}, "point set"),
        (lambda r: {"point_sets": [{**r.point_sets[0], "points": [[0.5]], "not_present": False}]}, r"must be \[x, y\]"),
        (lambda r: {"point_sets": [{**r.point_sets[0], "points": [[0.1, 0.2]], "not_present": True}]}, "not_present"),
        (lambda r: {"recordings": [{**r.recordings[0], "duration_s": -1.0}]}, "duration_s"),
        (lambda r: {"recordings": [{**r.recordings[0], "duration_s": float("inf")}]}, "duration_s: inf is not a finite"),
        (lambda r: {"recordings": [{**r.recordings[0], "sha256": "not-a-digest"}]}, "recording .*sha256"),
        (lambda r: {"image": {**r.image, "width": 0}}, "width must be a positive integer"),
        (lambda r: {"transcripts": [{**r.transcripts[0], "metrics": [1, 2]}]}, "metrics must be an object"),
    ],
)
def test_bad_rows_fail_naming_the_image(demo, change, message):
    db, _ = demo
    rows, usernames = _demo_rows(db)
    r = next(r for r in rows.values() if r.point_sets and r.recordings and r.transcripts)
    bad = dataclasses.replace(r, **change(r))
    with pytest.raises(ExportError, match=message) as caught:
        build_sample(bad, usernames, val_fraction=0.0, with_audio=False)
    assert r.image["sha256"] in str(caught.value)


def test_export_of_a_bad_row_fails_clearly_and_writes_no_manifest(demo, tmp_path):
    db, store = demo
    with db.session() as session:
        point_set = session.scalars(select(PointSet).where(PointSet.not_present.is_(False))).first()
        point_set.points = [[0.5, 1.25]]
        key = session.get(Image, point_set.image_id).sha256
    out = tmp_path / "out"
    with pytest.raises(ExportError, match=f"image {key}: point set {point_set.id}"):
        export_webdataset(db, store, out, options=WebDatasetOptions(workers=2))
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("*.tar"))
