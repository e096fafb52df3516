"""Data contracts: checked-in JSON Schema files, PixMo HF rows and their Arrow schemas, ExportSample."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError as PydanticValidationError

from schemas import generate
from schemas.export import ExportSample
from schemas.transcript import TranscriptRecord
from schemas.pixmo_hf import (
    HF_REPOS,
    ROW_MODELS,
    SUBSETS,
    PixmoCountRow,
    PixmoPointExplanationsRow,
    PixmoPointsRow,
    arrow_schema,
    rows_to_table,
)

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

SHA = hashlib.sha256(b"image").hexdigest()
SHA2 = hashlib.sha256(b"other image").hexdigest()
AUDIO_SHA = hashlib.sha256(b"audio").hexdigest()

# Realistic rows, shaped like the released parquet (values invented).
SAMPLE_ROWS: dict[str, list[dict[str, Any]]] = {
    "cap": [
        {
            "image_url": "https://example.org/photos/kitchen.jpg",
            "caption": "A bright kitchen with white cabinets. Three copper pots hang above the stove...",
            "transcripts": [
                "okay so at first glance this is a kitchen um there are three copper pots",
                "this looks like a modern kitchen, white cabinets, a window on the left",
            ],
        },
        {"image_url": "https://example.org/b.png", "caption": "A drawing of a cat.", "transcripts": []},
    ],
    "points": [
        {
            "image_url": "https://example.org/market.jpg",
            "image_sha256": SHA,
            "points": [{"x": 12.5, "y": 40.25}, {"x": 61.0, "y": 33.75}],
            "count": 2,
            "label": "orange umbrella",
            "collection_method": "pointing",
        },
        {
            "image_url": "https://example.org/market.jpg",
            "image_sha256": SHA,
            "points": [],
            "count": 0,
            "label": "giraffe",
            "collection_method": "counting",
        },
    ],
    "ama": [
        {
            "image_url": "https://example.org/receipt.jpg",
            "image_sha256": SHA2,
            "question": "What is the total on this receipt?",
            "answer": "The total printed at the bottom of the receipt is $23.40.",
        }
    ],
    "capqa": [
        {
            "image_url": "https://example.org/kitchen.jpg",
            "question": "How many pots hang above the stove?",
            "answer": "Three copper pots hang above the stove.",
            "messages": ["How many pots hang above the stove?", "Three copper pots hang above the stove."],
        }
    ],
    "point_explanations": [
        {
            "image_url": "https://example.org/desk.jpg",
            "image_sha256": SHA2,
            "question": "Which objects on the desk need power?",
            "response": "The laptop and the lamp need power.",
            "parsed_response": "The <|POINT|> and the <|POINT|> need power.",
            "alt_text": ["laptop", "lamp"],
            "inline_text": ["laptop", "lamp"],
            "points": [[[35.5, 60.0]], [[80.25, 20.0], [81.0, 22.5]]],
        },
        {
            "image_url": "https://example.org/desk.jpg",
            "image_sha256": SHA2,
            "question": "Is it daytime?",
            "response": "Yes, sunlight comes through the window.",
            "parsed_response": None,
            "alt_text": [],
            "inline_text": [],
            "points": [],
        },
    ],
    "count": [
        {
            "image_url": "https://example.org/sheep.jpg",
            "image_sha256": SHA,
            "count": 3,
            "points": {"x": [120.5, 300.0, 410.25], "y": [88.0, 92.5, 130.0]},
            "label": "sheep",
        },
        {"image_url": "https://example.org/cows.jpg", "image_sha256": SHA2, "count": 4, "points": None, "label": "cow"},
    ],
}


# ----------------------------------------------------------------------------- generated files


def test_checked_in_json_schemas_are_fresh() -> None:
    stale = generate.stale_files()
    assert not stale, f"stale files in schemas/json: {stale}; run `python -m schemas.generate`"


def test_generate_check_flags_stale_missing_and_orphaned(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    assert "python -m schemas.generate" in capsys.readouterr().err
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{stem}.json" for stem in generate.MODELS)
    for name in names:
        text = (tmp_path / name).read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    (tmp_path / "export_sample.json").write_text("{}\n", encoding="utf-8")
    (tmp_path / "old_model.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "export_sample.json" in err and "old_model.json" in err
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert not (tmp_path / "old_model.json").exists()
    assert generate.stale_files(tmp_path) == []


def test_every_contract_has_a_schema_file() -> None:
    assert set(generate.MODELS.values()) == {ExportSample, TranscriptRecord, *ROW_MODELS.values()}


# ----------------------------------------------------------------------------- HF rows


def test_subsets_are_the_six_released_sets() -> None:
    assert list(SUBSETS) == ["cap", "points", "ama", "capqa", "point_explanations", "count"]
    assert set(SAMPLE_ROWS) == set(SUBSETS)
    assert HF_REPOS["ama"] == "allenai/pixmo-ask-model-anything"
    with pytest.raises(KeyError):
        arrow_schema("clocks")


@pytest.mark.parametrize("subset", list(SAMPLE_ROWS))
def test_hf_model_validates_realistic_rows(subset: str) -> None:
    model, _ = SUBSETS[subset]
    for row in SAMPLE_ROWS[subset]:
        parsed = model.model_validate(row)
        assert parsed.model_dump() == row


@pytest.mark.parametrize("subset", list(SAMPLE_ROWS))
def test_arrow_schema_names_match_model_fields(subset: str) -> None:
    model, schema = SUBSETS[subset]
    assert schema.names == list(model.model_fields)
    assert schema.equals(model.arrow_schema())


def test_released_arrow_types() -> None:
    assert SUBSETS["points"][1].field("points").type == pa.list_(
        pa.struct([pa.field("x", pa.float64()), pa.field("y", pa.float64())])
    )
    assert SUBSETS["points"][1].field("count").type == pa.int64()
    assert SUBSETS["cap"][1].field("transcripts").type == pa.list_(pa.string())
    count = SUBSETS["count"][1]
    assert count.field("count").type == pa.int32()
    assert count.field("points").type == pa.struct(
        [pa.field("x", pa.list_(pa.float32())), pa.field("y", pa.list_(pa.float32()))]
    )


@pytest.mark.parametrize("subset", list(SAMPLE_ROWS))
def test_table_round_trips_through_parquet_with_exact_schema(subset: str, tmp_path: Path) -> None:
    model, schema = SUBSETS[subset]
    table = rows_to_table(subset, SAMPLE_ROWS[subset])
    assert table.schema.equals(schema)
    path = tmp_path / f"{subset}.parquet"
    pq.write_table(table, path)
    back = pq.read_table(path)
    assert back.schema.equals(schema, check_metadata=False)
    assert back.schema.names == schema.names and back.schema.types == schema.types
    assert back.to_pylist() == SAMPLE_ROWS[subset]
    assert [model.model_validate(r).model_dump() for r in back.to_pylist()] == SAMPLE_ROWS[subset]


def test_rows_to_table_accepts_models_and_refuses_bad_rows() -> None:
    rows = [PixmoPointsRow.model_validate(r) for r in SAMPLE_ROWS["points"]]
    assert rows_to_table("points", rows).num_rows == 2
    bad = dict(SAMPLE_ROWS["points"][0], collection_method="guessing")
    with pytest.raises(PydanticValidationError):
        rows_to_table("points", [bad])


def test_hf_rows_ignore_extra_release_columns_but_check_structure() -> None:
    row = dict(SAMPLE_ROWS["capqa"][0], __index_level_0__=7)
    assert "__index_level_0__" not in ROW_MODELS["capqa"].model_validate(row).model_dump()
    with pytest.raises(PydanticValidationError):
        PixmoCountRow.model_validate(dict(SAMPLE_ROWS["count"][0], points={"x": [1.0], "y": []}))
    with pytest.raises(PydanticValidationError):
        PixmoPointExplanationsRow.model_validate(dict(SAMPLE_ROWS["point_explanations"][0], alt_text=["laptop"]))
    with pytest.raises(PydanticValidationError):
        PixmoPointsRow.model_validate({k: v for k, v in SAMPLE_ROWS["points"][0].items() if k != "label"})


# ----------------------------------------------------------------------------- ExportSample


def export_record() -> dict[str, Any]:
    return {
        "key": SHA,
        "image": {
            "sha256": SHA,
            "width": 1024,
            "height": 768,
            "mime": "image/jpeg",
            "bytes": 183_422,
            "source_url": "https://example.org/kitchen.jpg",
            "source": "url",
            "ext": "jpg",
        },
        "projects": ["kitchen-captions", "kitchen-points"],
        "captions": [
            {
                "id": 11,
                "kind": "cleaned",
                "text": "A bright kitchen with three copper pots above the stove.",
                "model": "SmolLM2-135M-Instruct-Q4_1",
                "prompt_version": "clean-v1",
                "produced_by": "llm",
                "source_transcript_ids": [5],
                "faithfulness": 0.92,
                "flags": [],
            }
        ],
        "transcripts": [
            {
                "id": 5,
                "recording_id": 3,
                "text": "okay so this is a kitchen with three copper pots",
                "language": "en",
                "asr_model": "faster-whisper/tiny.en",
                "duration_s": 64.2,
                "metrics": {"words_per_minute": 128.5, "avg_logprob": -0.31},
                "flags": ["short"],
            }
        ],
        "recordings": [
            {
                "id": 3,
                "sha256": AUDIO_SHA,
                "mime": "audio/webm",
                "duration_s": 64.2,
                "annotator": "ann1",
                "audio_member": "rec3.webm",
            }
        ],
        "point_sets": [
            {"id": 7, "label": "copper pot", "points": [[0.2, 0.1], [0.25, 0.1], [0.3, 0.12]],
             "not_present": False, "method": "counting", "annotator": "ann2"},
            {"id": 8, "label": "cat", "points": [], "not_present": True, "method": "pointing", "annotator": None},
        ],
        "qa": [
            {"id": 21, "source": "capqa", "question": "How many pots?", "answer": "Three.",
             "model": "SmolLM2-135M-Instruct-Q4_1", "prompt_version": "capqa-v1", "status": "accepted"}
        ],
        "reviews": [
            {"target_type": "caption", "target_id": 11, "verdict": "approved", "reason": "",
             "reviewer": "rev1", "created_at": "2025-01-02T03:04:05Z"}
        ],
        "review_status": "approved",
        "split": "train",
        "lineage": {
            "asr_models": ["faster-whisper/tiny.en"],
            "llm_models": ["SmolLM2-135M-Instruct-Q4_1"],
            "prompt_versions": ["capqa-v1", "clean-v1"],
        },
        "schema_version": 1,
    }


def test_export_sample_round_trips_json() -> None:
    sample = ExportSample.model_validate(export_record())
    assert sample.reviews[0].created_at == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    again = ExportSample.model_validate_json(sample.model_dump_json())
    assert again == sample
    dumped = json.loads(sample.model_dump_json())
    assert dumped["point_sets"][0]["points"] == [[0.2, 0.1], [0.25, 0.1], [0.3, 0.12]]
    assert set(dumped) == set(ExportSample.model_fields)


def test_export_sample_matches_checked_in_json_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((generate.SCHEMA_DIR / "export_sample.json").read_text(encoding="utf-8"))
    dumped = json.loads(ExportSample.model_validate(export_record()).model_dump_json())
    jsonschema.validate(dumped, schema)
    dumped["image"]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dumped, schema)


@pytest.mark.parametrize(
    "path",
    [(), ("image",), ("captions", 0), ("transcripts", 0), ("recordings", 0), ("point_sets", 0), ("qa", 0),
     ("reviews", 0), ("lineage",)],
)
def test_export_sample_refuses_unknown_fields(path: tuple[Any, ...]) -> None:
    record = export_record()
    target: Any = record
    for part in path:
        target = target[part]
    target["unexpected"] = 1
    with pytest.raises(PydanticValidationError, match="unexpected"):
        ExportSample.model_validate(record)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(key=SHA2),  # key must be the image's sha256
        lambda r: r.update(key="NOT-A-SHA"),
        lambda r: r["point_sets"][0]["points"].append([1.2, 0.5]),  # not normalised
        lambda r: r["point_sets"][0]["points"].append([0.5]),
        lambda r: r["point_sets"][1]["points"].append([0.5, 0.5]),  # not_present with points
        lambda r: r["captions"][0].update(kind="summary"),
        lambda r: r["reviews"][0].update(verdict="maybe"),
        lambda r: r.update(split="test"),
        lambda r: r.update(review_status="done"),
        lambda r: r["image"].update(width=0),
        lambda r: r.pop("split"),
    ],
)
def test_export_sample_refuses_bad_values(mutate: Any) -> None:
    record = copy.deepcopy(export_record())
    mutate(record)
    with pytest.raises(PydanticValidationError):
        ExportSample.model_validate(record)
