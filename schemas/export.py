"""The export record: one `ExportSample` per image, the ``.json`` member of a webdataset sample.

Everything an image has (captions, transcripts, recordings, point sets, QA, reviews) with its
lineage. Unknown fields are refused everywhere (``extra="forbid"``), so a typo in an exporter or a
drift between writer and reader fails loudly. Point coordinates are normalised to [0, 1], origin
top-left. Bump `EXPORT_SCHEMA_VERSION` on any incompatible change and rerun
``python -m schemas.generate``.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

__all__ = [
    "EXPORT_SCHEMA_VERSION",
    "ExportCaption",
    "ExportImage",
    "ExportLineage",
    "ExportModel",
    "ExportPointSet",
    "ExportQA",
    "ExportRecording",
    "ExportReview",
    "ExportSample",
    "ExportTranscript",
    "NormCoord",
    "Sha256",
]

EXPORT_SCHEMA_VERSION = 2  # 2: ExportQA.caption_id

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""Lower-case hex sha256 digest."""

NormCoord = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
"""A normalised coordinate in [0, 1]."""


class ExportModel(BaseModel):
    """Base of the export models: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class ExportImage(ExportModel):
    """The image itself; its bytes are the sample's image member (``<key>.<ext>``)."""

    sha256: Sha256
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    mime: str
    bytes: int = Field(ge=0, description="size of the original image file in bytes")
    source_url: str | None = None
    source: str = Field(description="where the image came from, e.g. folder, url, pixmo-cap")
    ext: str = Field(pattern=r"^[a-z0-9]+$", description="extension of the image member, no dot")


class ExportCaption(ExportModel):
    """A written caption: cleaned from one transcript or merged from several."""

    id: int
    kind: Literal["cleaned", "merged"]
    text: str
    model: str
    prompt_version: str
    produced_by: Literal["llm", "rule", "human"]
    source_transcript_ids: list[int] = Field(default_factory=list)
    faithfulness: float | None = None
    flags: list[str] = Field(default_factory=list)


class ExportTranscript(ExportModel):
    """ASR output of one recording by one model, with its quality metrics and flags."""

    id: int
    recording_id: int
    text: str
    language: str | None = None
    asr_model: str
    duration_s: float | None = Field(default=None, ge=0)
    metrics: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)


class ExportRecording(ExportModel):
    """One spoken description; `audio_member` names its member in the shard when audio is exported."""

    id: int
    sha256: Sha256
    mime: str
    duration_s: float = Field(ge=0)
    annotator: str | None = None
    audio_member: str | None = None


class ExportPointSet(ExportModel):
    """Points of one referring expression; `not_present` sets have no points."""

    id: int
    label: str
    points: list[tuple[NormCoord, NormCoord]] = Field(
        default_factory=list, description="[x, y] pairs normalised to [0, 1], origin top-left"
    )
    not_present: bool = False
    method: Literal["pointing", "counting"]
    annotator: str | None = None

    @model_validator(mode="after")
    def _not_present_has_no_points(self) -> ExportPointSet:
        if self.not_present and self.points:
            raise ValueError("a not_present point set must have no points")
        return self


class ExportQA(ExportModel):
    """A question and its answer (CapQA, ask-the-model, or point explanation)."""

    id: int
    source: Literal["capqa", "ask", "point_explain"]
    question: str
    answer: str
    model: str | None = None
    prompt_version: str | None = None
    status: Literal["pending", "accepted", "rejected", "failed"]
    caption_id: int | None = Field(None, description="the caption a CapQA pair was written from, or an answer grounded in")


class ExportReview(ExportModel):
    """A reviewer's verdict on one row of this image."""

    target_type: Literal["recording", "transcript", "caption", "point_set", "qa_pair", "assignment"]
    target_id: int
    verdict: Literal["approved", "rejected", "flagged"]
    reason: str = ""
    reviewer: str | None = None
    created_at: dt.datetime


class ExportLineage(ExportModel):
    """Which models and prompt versions produced the derived rows of this sample."""

    asr_models: list[str] = Field(default_factory=list)
    llm_models: list[str] = Field(default_factory=list)
    prompt_versions: list[str] = Field(default_factory=list)


class ExportSample(ExportModel):
    """The JSON record written per image in webdataset shards (``<key>.json``)."""

    key: Sha256 = Field(description="the sample key: the image's sha256")
    image: ExportImage
    projects: list[str] = Field(default_factory=list)
    captions: list[ExportCaption] = Field(default_factory=list)
    transcripts: list[ExportTranscript] = Field(default_factory=list)
    recordings: list[ExportRecording] = Field(default_factory=list)
    point_sets: list[ExportPointSet] = Field(default_factory=list)
    qa: list[ExportQA] = Field(default_factory=list)
    reviews: list[ExportReview] = Field(default_factory=list)
    review_status: Literal["approved", "rejected", "pending", "flagged"] = "pending"
    split: Literal["train", "validation"]
    lineage: ExportLineage = Field(default_factory=ExportLineage)
    schema_version: int = EXPORT_SCHEMA_VERSION

    @model_validator(mode="after")
    def _key_is_image_sha(self) -> ExportSample:
        if self.key != self.image.sha256:
            raise ValueError("key must equal image.sha256")
        return self
