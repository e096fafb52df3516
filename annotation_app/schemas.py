"""Request and response bodies of the JSON API (they make the OpenAPI docs at /docs)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=256)
    role: Literal["annotator", "reviewer", "admin"] = "annotator"


class UserPatch(BaseModel):
    """What an admin may change of a user; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["annotator", "reviewer", "admin"] | None = None
    is_active: bool | None = None
    password: str | None = Field(None, min_length=8, max_length=256)


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    username: str
    role: str
    is_active: bool


class ProjectIn(BaseModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]  # trimmed first
    kind: Literal["caption", "points", "ask", "point_explain"]
    instructions: str = ""
    min_seconds: float = Field(60.0, ge=0)
    max_seconds: float = Field(90.0, gt=0)
    overlap: int = Field(1, ge=1, le=100)
    labels: list[str] = Field(default_factory=list)
    gold_fraction: float = Field(0.0, ge=0, le=1)
    max_points: int = Field(100, ge=1, le=10_000)
    lease_minutes: float = Field(30.0, gt=0)
    language: str = Field("en", max_length=16)


class ProjectOut(BaseModel):
    id: int
    name: str
    kind: str
    instructions: str
    config: dict[str, Any]
    images: int | None = None


class AttachIn(BaseModel):
    """Which ingested images to attach: explicit ids, sha256s, another project's, or every image."""

    image_ids: list[int] = Field(default_factory=list)
    sha256: list[str] = Field(default_factory=list)
    from_project: str | None = None
    all_images: bool = False
    gold: bool = False


class AttachOut(BaseModel):
    attached: int
    images: int


class GoldIn(BaseModel):
    answer: dict[str, Any] | None = Field(description='{"points": {"label": [[x, y], ...]}} (normalised 0-1; [] for '
                                                      "not present); null clears it")


class GoldOut(BaseModel):
    image_id: int
    is_gold: bool
    gold_answer: dict[str, Any] | None


class AssignmentOut(BaseModel):
    id: int
    project_id: int
    project_kind: str
    image_id: int | None  # null for annotators (see is_gold)
    image_url: str
    width: int
    height: int
    status: str
    is_gold: bool | None  # null for annotators: check items must look like any other task
    expires_at: dt.datetime | None
    resumed: bool = False
    label: str | None = None
    task_url: str


class NextOut(BaseModel):
    assignment: AssignmentOut | None
    message: str = ""


class SkipIn(BaseModel):
    reason: str = Field("", max_length=500)
    active_seconds: float | None = None


class HeartbeatIn(BaseModel):
    active_seconds: float | None = None


class RecordingOut(BaseModel):
    id: int
    assignment_id: int | None
    duration_s: float
    mime: str
    bytes: int
    sha256: str
    replayed: bool = False


class PointsIn(BaseModel):
    label: str = ""
    points: list[Any] = Field(default_factory=list, description="normalised [x, y] pairs in [0, 1]")
    not_present: bool = False
    method: str = "pointing"
    active_seconds: float | None = None


class PointSetOut(BaseModel):
    id: int
    assignment_id: int | None
    label: str
    points: list[Any]
    not_present: bool
    method: str


class ReviewIn(BaseModel):
    target_type: Literal["recording", "point_set", "qa_pair"]
    target_id: int
    verdict: Literal["approved", "rejected", "flagged"]
    reason: str = ""


class ReviewOut(BaseModel):
    id: int
    target_type: str
    target_id: int
    verdict: str
    reason: str


class AskIn(BaseModel):
    question: str = Field(min_length=1, max_length=2000)


class ExplainIn(BaseModel):
    question: str = Field(min_length=1, max_length=2000)
    marks: list[Any] = Field(description='the things the answer points at: [{"label": "chair", "points": [[x, y], ...]}], '
                                         "normalised [0, 1], cited [1], [2], ... in this order")


class ReviseIn(BaseModel):
    feedback: str = Field(min_length=1, max_length=2000)


class AcceptIn(BaseModel):
    active_seconds: float | None = None
    answer: str | None = None  # the answer the annotator saw: accepted only if it is still the current one


class QAOut(BaseModel):
    id: int
    question: str
    answer: str = Field(description="the stored answer (a point explanation's has Molmo point text in place of each citation)")
    status: str
    revisions: list[Any]
    model: str | None
    text: str | None = Field(None, description="a point explanation as the model wrote it, citing marks as [n]")
    marks: list[Any] | None = Field(None, description="a point explanation's marks, [n] cites the n-th")
