"""Rows of the released PixMo Hugging Face datasets: one pydantic model and one Arrow schema each.

Column names, order and types follow the dataset cards' ``dataset_info.features`` (HF ``string``
-> ``string``, ``int64``/``int32`` -> same, ``float64`` -> ``double``, ``list:``/``sequence:`` of a
value -> ``list<...>``, ``list:`` of named fields -> ``list<struct<...>>``, and ``sequence:`` of named
fields -> ``struct<name: list<...>>``, which is how HF ``datasets`` stores a Sequence of a dict).
Where a card could not be read, the source of each choice is said next to the model.

pyarrow is an optional dependency (the ``export`` extra): it is imported only when an Arrow schema
is asked for, so importing this module is cheap.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, model_validator

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "HF_REPOS",
    "PixmoAskModelAnythingRow",
    "PixmoCapQaRow",
    "PixmoCapRow",
    "PixmoCountPoints",
    "PixmoCountRow",
    "PixmoHFRow",
    "PixmoPoint",
    "PixmoPointExplanationsRow",
    "PixmoPointsRow",
    "ROW_MODELS",
    "SUBSETS",
    "arrow_schema",
    "rows_to_table",
]


def _pa() -> Any:
    try:
        import pyarrow
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Arrow schemas of the PixMo HF rows need pyarrow: pip install 'pixmo-toolkit[export]'"
        ) from exc
    return pyarrow


class PixmoHFRow(BaseModel):
    """Base of the HF row models.

    Unknown columns are ignored rather than refused: released parquet files can carry extra
    columns (e.g. a pandas ``__index_level_0__`` in an early pixmo-cap-qa upload).
    """

    model_config = ConfigDict(extra="ignore")

    subset: ClassVar[str]
    hf_repo: ClassVar[str]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        """The Arrow schema of this subset's released parquet: exact column names and types."""
        raise NotImplementedError


class PixmoPoint(BaseModel):
    """One point of a pixmo-points row, on PixMo's 0-100 scale."""

    model_config = ConfigDict(extra="forbid")

    x: float
    y: float


class PixmoCapRow(PixmoHFRow):
    """allenai/pixmo-cap: a long caption and the spoken transcripts it was written from.

    Card (dataset_info): image_url string, caption string, transcripts sequence<string>.
    """

    subset: ClassVar[str] = "cap"
    hf_repo: ClassVar[str] = "allenai/pixmo-cap"

    image_url: str
    caption: str
    transcripts: list[str]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        return pa.schema(
            [
                pa.field("image_url", pa.string()),
                pa.field("caption", pa.string()),
                pa.field("transcripts", pa.list_(pa.string())),
            ]
        )


class PixmoPointsRow(PixmoHFRow):
    """allenai/pixmo-points: one referring expression and every point of it.

    Card (dataset_info): image_url string, image_sha256 string, points list<{x float64,
    y float64}>, count int64, label string, collection_method string. The card's prose says
    "pixels", but Molmo's loader reads these points with ``point_scale=100`` (and DESIGN.md says
    0-100): coordinates are on the 0-100 scale. No points (count 0) is a "not present" example.
    """

    subset: ClassVar[str] = "points"
    hf_repo: ClassVar[str] = "allenai/pixmo-points"

    image_url: str
    image_sha256: str
    points: list[PixmoPoint]
    count: int
    label: str
    collection_method: Literal["pointing", "counting"]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        point = pa.struct([pa.field("x", pa.float64()), pa.field("y", pa.float64())])
        return pa.schema(
            [
                pa.field("image_url", pa.string()),
                pa.field("image_sha256", pa.string()),
                pa.field("points", pa.list_(point)),
                pa.field("count", pa.int64()),
                pa.field("label", pa.string()),
                pa.field("collection_method", pa.string()),
            ]
        )


class PixmoAskModelAnythingRow(PixmoHFRow):
    """allenai/pixmo-ask-model-anything: one human-written question and its accepted answer.

    Card (dataset_info): image_url, image_sha256, question, answer, all string.
    """

    subset: ClassVar[str] = "ama"
    hf_repo: ClassVar[str] = "allenai/pixmo-ask-model-anything"

    image_url: str
    image_sha256: str
    question: str
    answer: str

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        return pa.schema([pa.field(n, pa.string()) for n in cls.model_fields])


class PixmoCapQaRow(PixmoHFRow):
    """allenai/pixmo-cap-qa: QA written by an LLM that saw only the caption.

    Partly confirmed: the first card (commit 94817b5) lists image_url, question, answer (string;
    plus a pandas ``__index_level_0__``, not data). The current release (re-uploaded Dec 2024)
    could not be read here; Molmo's loader reads a ``messages`` column (alternating user /
    assistant turns, a list of strings) and DESIGN.md lists ``messages`` too, so it is included as
    list<string>. ``question`` may carry ``[USER]``/``[ASSISTANT]`` turn tags for multi-turn rows.
    """

    subset: ClassVar[str] = "capqa"
    hf_repo: ClassVar[str] = "allenai/pixmo-cap-qa"

    image_url: str
    question: str
    answer: str
    messages: list[str]

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        return pa.schema(
            [
                pa.field("image_url", pa.string()),
                pa.field("question", pa.string()),
                pa.field("answer", pa.string()),
                pa.field("messages", pa.list_(pa.string())),
            ]
        )


class PixmoPointExplanationsRow(PixmoHFRow):
    """allenai/pixmo-point-explanations: an answer that cites points inline.

    The card's features could not be read here. Columns are those that Molmo's loader and other
    public loaders read: question, response, parsed_response (nullable; the response with
    ``<|POINT|>`` placeholders), alt_text and inline_text (one per placeholder), points (one list
    of [x, y] pairs on the 0-100 scale per placeholder), plus image_url and image_sha256 (Molmo
    checks hashes for this subset). float64 for coordinates is an assumption.
    """

    subset: ClassVar[str] = "point_explanations"
    hf_repo: ClassVar[str] = "allenai/pixmo-point-explanations"

    image_url: str
    image_sha256: str
    question: str
    response: str
    parsed_response: str | None
    alt_text: list[str]
    inline_text: list[str]
    points: list[list[list[float]]]

    @model_validator(mode="after")
    def _one_annotation_each(self) -> PixmoPointExplanationsRow:
        if not (len(self.alt_text) == len(self.inline_text) == len(self.points)):
            raise ValueError("alt_text, inline_text and points must have one entry per cited point set")
        for group in self.points:
            if any(len(p) != 2 for p in group):
                raise ValueError("each point must be an [x, y] pair")
        return self

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        return pa.schema(
            [
                pa.field("image_url", pa.string()),
                pa.field("image_sha256", pa.string()),
                pa.field("question", pa.string()),
                pa.field("response", pa.string()),
                pa.field("parsed_response", pa.string()),
                pa.field("alt_text", pa.list_(pa.string())),
                pa.field("inline_text", pa.list_(pa.string())),
                pa.field("points", pa.list_(pa.list_(pa.list_(pa.float64())))),
            ]
        )


class PixmoCountPoints(BaseModel):
    """pixmo-count points as HF stores a Sequence of {x, y}: parallel lists, in pixels."""

    model_config = ConfigDict(extra="forbid")

    x: list[float]
    y: list[float]

    @model_validator(mode="after")
    def _same_length(self) -> PixmoCountPoints:
        if len(self.x) != len(self.y):
            raise ValueError("points.x and points.y must have the same length")
        return self


class PixmoCountRow(PixmoHFRow):
    """allenai/pixmo-count: detector-made counting data (val/test human-verified).

    Card (dataset_info): image_url string, image_sha256 string, count int32, points
    sequence<{x float32, y float32}>, label string. Points are in pixels and missing for the
    eval splits.
    """

    subset: ClassVar[str] = "count"
    hf_repo: ClassVar[str] = "allenai/pixmo-count"

    image_url: str
    image_sha256: str
    count: int
    points: PixmoCountPoints | None
    label: str

    @classmethod
    def arrow_schema(cls) -> pa.Schema:
        pa = _pa()
        points = pa.struct(
            [pa.field("x", pa.list_(pa.float32())), pa.field("y", pa.list_(pa.float32()))]
        )
        return pa.schema(
            [
                pa.field("image_url", pa.string()),
                pa.field("image_sha256", pa.string()),
                pa.field("count", pa.int32()),
                pa.field("points", points),
                pa.field("label", pa.string()),
            ]
        )


ROW_MODELS: dict[str, type[PixmoHFRow]] = {
    "cap": PixmoCapRow,
    "points": PixmoPointsRow,
    "ama": PixmoAskModelAnythingRow,
    "capqa": PixmoCapQaRow,
    "point_explanations": PixmoPointExplanationsRow,
    "count": PixmoCountRow,
}
"""Subset name -> row model."""

HF_REPOS: dict[str, str] = {name: model.hf_repo for name, model in ROW_MODELS.items()}
"""Subset name -> Hugging Face dataset repository."""


def arrow_schema(subset: str) -> pa.Schema:
    """The Arrow schema of one subset (`cap`, `points`, `ama`, `capqa`, `point_explanations`, `count`)."""
    try:
        model = ROW_MODELS[subset]
    except KeyError:
        raise KeyError(f"unknown PixMo subset {subset!r}; known: {', '.join(ROW_MODELS)}") from None
    return model.arrow_schema()


class _Subsets(Mapping[str, "tuple[type[PixmoHFRow], pa.Schema]"]):
    """Subset name -> (row model, Arrow schema); schemas are built (and pyarrow imported) on access."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[type[PixmoHFRow], pa.Schema]] = {}

    def __getitem__(self, name: str) -> tuple[type[PixmoHFRow], pa.Schema]:
        if name not in self._cache:
            self._cache[name] = (ROW_MODELS[name], arrow_schema(name))
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(ROW_MODELS)

    def __len__(self) -> int:
        return len(ROW_MODELS)

    def __contains__(self, name: object) -> bool:
        return name in ROW_MODELS

    def __repr__(self) -> str:
        return f"SUBSETS({', '.join(ROW_MODELS)})"


SUBSETS: Mapping[str, tuple[type[PixmoHFRow], pa.Schema]] = _Subsets()
"""Subset name -> (row model, Arrow schema), for ``cap, points, ama, capqa, point_explanations, count``."""


def rows_to_table(subset: str, rows: Iterable[PixmoHFRow | Mapping[str, Any]]) -> pa.Table:
    """Validate rows against the subset's model and build an Arrow table with its exact schema."""
    model, schema = SUBSETS[subset]
    records = []
    for row in rows:
        valid = row if isinstance(row, model) else model.model_validate(row)
        records.append(valid.model_dump(mode="python"))
    return _pa().Table.from_pylist(records, schema=schema)
