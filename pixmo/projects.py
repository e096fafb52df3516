"""Projects: kinds, their configuration, and which images they hold."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError as PydanticValidationError, field_validator, model_validator
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pixmo.db.models import PROJECT_KINDS, Image, Project, ProjectImage
from pixmo.db.queries import insert_ignore
from pixmo.errors import NotFoundError, ValidationError

GUIDING_QUESTIONS = [
    "What is the image at first glance?",
    "What are the objects and their counts?",
    "What does the text say?",
    "What are the positions of the objects?",
    "What subtle details are noticeable?",
    "What is in the background?",
    "What is the style and color?",
]


MAX_NAME_CHARS = 128  # the projects.name column
MAX_LABEL_CHARS = 200
MAX_OVERLAP = 100
MAX_POINTS = 10_000


def _has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)  # C0, DEL and C1


def clean_label(label: str | None) -> str:
    """A label as it is stored and compared: spaces collapsed; ValueError on a control character
    (a NUL, which PostgreSQL's text cannot hold, among them)."""
    label = " ".join((label or "").split())
    if _has_control_chars(label):
        raise ValueError("a label may not hold control characters")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"): no text a database or a reply can hold
        raise ValueError("a label must be valid Unicode text") from None
    if len(label) > MAX_LABEL_CHARS:
        raise ValueError(f"a label is at most {MAX_LABEL_CHARS} characters")
    return label


class ProjectConfig(BaseModel):
    """Per-project settings (stored as JSON on the project row)."""

    # inf or NaN is no length or count, and not JSON: PostgreSQL refuses it, SQLite stores invalid JSON
    model_config = ConfigDict(allow_inf_nan=False)

    min_seconds: float = Field(60.0, ge=0)
    max_seconds: float = Field(90.0, gt=0)
    overlap: int = Field(1, ge=1, le=MAX_OVERLAP, description="distinct annotators per image")
    labels: list[str] = Field(default_factory=list, description="referring expressions for pointing")
    guiding_questions: list[str] = Field(default_factory=lambda: list(GUIDING_QUESTIONS))
    gold_fraction: float = Field(0.0, ge=0, le=1)
    language: str = Field("en", description="spoken language, a Whisper code such as en or de (transcription pins it)")
    max_points: int = Field(100, ge=1, le=MAX_POINTS)
    lease_minutes: float = Field(30.0, gt=0, le=60 * 24 * 365)

    @field_validator("labels")
    @classmethod
    def _clean_labels(cls, labels: list[str]) -> list[str]:
        # as a submitted label is cleaned: spaces collapsed, blanks dropped (else no answer could match)
        cleaned = (clean_label(label) for label in labels)
        return list(dict.fromkeys(label for label in cleaned if label))

    @field_validator("language")
    @classmethod
    def _check_language(cls, language: str) -> str:
        # Whisper's codes are two letters, or three (haw, yue); the model refuses others at transcription
        code = language.strip().lower()
        if not (code.isascii() and code.isalpha() and 2 <= len(code) <= 3):
            raise ValueError(f"a language is a Whisper code such as en or de, not {language!r}")
        return code

    @model_validator(mode="after")
    def _check_range(self) -> ProjectConfig:
        if self.min_seconds > self.max_seconds:
            raise ValueError("min_seconds must not exceed max_seconds")
        return self


def create_project(
    session: Session, name: str, kind: str, instructions: str = "", **config: Any
) -> Project:
    """Add a project; ValidationError on a bad kind, config or a taken name."""
    if kind not in PROJECT_KINDS:
        raise ValidationError(f"kind must be one of {', '.join(PROJECT_KINDS)}, not {kind!r}")
    name = name.strip()
    if not name:
        raise ValidationError("a project needs a name")
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(f"a project name is at most {MAX_NAME_CHARS} characters")
    if _has_control_chars(name):
        raise ValidationError("a project name may not hold control characters")
    if session.scalars(select(Project).where(Project.name == name)).first():
        raise ValidationError(f"project {name!r} exists already")
    try:
        cfg = ProjectConfig(**config)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationError(f"bad project config: {where + ': ' if where else ''}{first['msg']}") from exc
    project = Project(name=name, kind=kind, instructions=instructions, config=cfg.model_dump())
    try:
        with session.begin_nested():  # another admin may have taken the name since the check above
            session.add(project)
    except IntegrityError:
        raise ValidationError(f"project {name!r} exists already") from None
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.scalars(select(Project).where(Project.name == name)).first()
    if project is None:
        raise NotFoundError(f"no project named {name!r}")
    return project


# bounds that settings stored under older, looser rules are brought within when read
_LEGACY_BOUNDS = {
    "overlap": (1, MAX_OVERLAP), "max_points": (1, MAX_POINTS), "gold_fraction": (0.0, 1.0),
    "lease_minutes": (1.0, 60.0 * 24 * 365), "min_seconds": (0.0, 86_400.0), "max_seconds": (1.0, 86_400.0),
}


def project_config(project: Project) -> ProjectConfig:
    """The project's settings. A row stored under older, looser rules is read as the nearest valid
    settings (numbers brought within bounds, inf as the upper one; labels cleaned, those that could
    never be submitted dropped) rather than break every page that lists its project."""
    config = project.config or {}
    try:
        return ProjectConfig(**config)
    except PydanticValidationError:
        return _legacy_config(config)


def _legacy_config(config: dict[str, Any]) -> ProjectConfig:
    fixed = dict(config)
    defaults = ProjectConfig().model_dump()
    for name, (low, high) in _LEGACY_BOUNDS.items():
        value = fixed.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isnan(value):
            value = defaults[name]
        value = min(max(value, low), high)
        fixed[name] = int(value) if isinstance(defaults[name], int) else float(value)
    labels: list[str] = []
    for label in fixed.get("labels") or []:
        try:
            label = clean_label(str(label))
        except ValueError:
            continue  # a label no answer could be submitted for
        if label and label not in labels:
            labels.append(label)
    fixed["labels"] = labels
    if isinstance(fixed.get("min_seconds"), float) and isinstance(fixed.get("max_seconds"), float):
        fixed["min_seconds"] = min(fixed["min_seconds"], fixed["max_seconds"])
    try:
        return ProjectConfig(**fixed)
    except PydanticValidationError:  # something else still odd: the defaults for what is not valid
        return ProjectConfig.model_construct(**{**defaults, **{k: v for k, v in fixed.items() if k in defaults}})


def attach_images(session: Session, project: Project, image_ids: list[int], gold: bool = False) -> int:
    """Add images to a project (already attached ones are left alone); returns how many were new."""
    rows = [{"project_id": project.id, "image_id": i, "is_gold": gold} for i in image_ids]
    return insert_ignore(session, ProjectImage, rows, ["project_id", "image_id"])


def list_projects(session: Session) -> list[tuple[Project, int]]:
    """Every project with its image count."""
    counts = (
        select(ProjectImage.project_id, func.count().label("n")).group_by(ProjectImage.project_id).subquery()
    )
    stmt = select(Project, func.coalesce(counts.c.n, 0)).outerjoin(counts, counts.c.project_id == Project.id)
    return [(p, n) for p, n in session.execute(stmt.order_by(Project.id))]


def images_of(session: Session, project: Project) -> list[Image]:
    stmt = select(Image).join(ProjectImage).where(ProjectImage.project_id == project.id).order_by(Image.id)
    return list(session.scalars(stmt))
