"""SQLAlchemy 2.0 typed models: the relational data model of DESIGN.md.

Raw ASR output, LLM output and human edits are separate rows; unique constraints make every
pipeline stage idempotent (a rerun finds the row and skips it).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")

ROLES = ("annotator", "reviewer", "admin")
PROJECT_KINDS = ("caption", "points", "ask", "point_explain")
ASSIGNMENT_STATUSES = ("leased", "submitted", "expired", "skipped")
CAPTION_KINDS = ("cleaned", "merged")
PRODUCERS = ("llm", "rule", "human")
POINT_METHODS = ("pointing", "counting")
QA_SOURCES = ("capqa", "ask", "point_explain")
# QA written in an annotator's exchange with the model: pending until the annotator accepts it
EXCHANGE_SOURCES = ("ask", "point_explain")
QA_STATUSES = ("pending", "accepted", "rejected", "failed")
VERDICTS = ("approved", "rejected", "flagged")
REVIEW_TARGETS = ("recording", "transcript", "caption", "point_set", "qa_pair", "assignment")
RESULT_STATUSES = ("ok", "failed")
JOB_STATUSES = ("running", "succeeded", "failed")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A stored time as an aware UTC datetime: SQLite hands back naive ones (every stored time is
    UTC), PostgreSQL aware ones in the session's zone."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


class UTCDateTime(TypeDecorator):
    """A point in time, stored in UTC and read back as an aware UTC datetime on every backend
    (SQLite hands back naive values, PostgreSQL aware ones in the session's zone): what the API
    writes out and what callers compare is the same everywhere. A naive value is taken as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
            if dialect.name == "sqlite":  # SQLite's DATETIME text has no zone: every stored time is UTC
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return as_utc(value) if isinstance(value, dt.datetime) else value


def _one_of(column: str, values: tuple[str, ...]) -> CheckConstraint:
    listed = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({listed})", name=f"{column}_valid")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONType, list[Any]: JSONType}


class TimestampMixin:
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (_one_of("role", ROLES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="annotator")
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(TimestampMixin, Base):
    """A bearer token for scripts; only its sha256 is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64), default="default")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="tokens")


class Project(TimestampMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (_one_of("kind", PROJECT_KINDS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    instructions: Mapped[str] = mapped_column(Text, default="")
    # min/max seconds, overlap, labels, guiding questions, gold fraction, language, max points
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Image(TimestampMixin, Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mime: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    source_url: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(32), default="folder")


class ProjectImage(TimestampMixin, Base):
    __tablename__ = "project_images"
    __table_args__ = (UniqueConstraint("project_id", "image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    gold_answer: Mapped[dict[str, Any] | None] = mapped_column()


class Assignment(TimestampMixin, Base):
    """A lease of one image of a project to one annotator."""

    __tablename__ = "assignments"
    __table_args__ = (
        _one_of("status", ASSIGNMENT_STATUSES),
        Index(None, "project_id", "image_id", "status"),
        Index(None, "user_id", "status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="leased")
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    submitted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    active_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    # latest review verdict of the submission; a rejected one frees the image's overlap slot
    review_verdict: Mapped[str | None] = mapped_column(String(16))


class Recording(TimestampMixin, Base):
    """One spoken description (the audio 'receipt') per caption submission."""

    __tablename__ = "recordings"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"), index=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mime: Mapped[str] = mapped_column(String(64))
    duration_s: Mapped[float] = mapped_column(Float)
    bytes: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)


class Transcript(TimestampMixin, Base):
    """ASR output for one recording and one model; unique per (recording, model)."""

    __tablename__ = "transcripts"
    __table_args__ = (UniqueConstraint("recording_id", "asr_model"), _one_of("status", RESULT_STATUSES))

    id: Mapped[int] = mapped_column(primary_key=True)
    recording_id: Mapped[int] = mapped_column(ForeignKey("recordings.id", ondelete="CASCADE"))
    asr_model: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    language: Mapped[str | None] = mapped_column(String(16))
    segments: Mapped[list[Any]] = mapped_column(default=list)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flags: Mapped[list[Any]] = mapped_column(default=list)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class Caption(TimestampMixin, Base):
    """A written caption of one image: cleaned from one transcript, or merged from several."""

    __tablename__ = "captions"
    __table_args__ = (
        UniqueConstraint("image_id", "kind", "model", "prompt_version", "source_key"),
        _one_of("kind", CAPTION_KINDS),
        _one_of("produced_by", PRODUCERS),
        _one_of("status", RESULT_STATUSES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="ok")
    error: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str] = mapped_column(String(255))
    prompt_version: Mapped[str] = mapped_column(String(64))
    produced_by: Mapped[str] = mapped_column(String(16), default="llm")
    source_transcript_ids: Mapped[list[Any]] = mapped_column(default=list)
    # sorted source transcript ids joined by ",": lets the unique constraint see the lineage
    source_key: Mapped[str] = mapped_column(String(512), default="")
    faithfulness: Mapped[dict[str, Any]] = mapped_column(default=dict)
    flags: Mapped[list[Any]] = mapped_column(default=list)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class PointSet(TimestampMixin, Base):
    """Points for one referring expression; coordinates normalised to [0, 1]."""

    __tablename__ = "point_sets"
    __table_args__ = (_one_of("method", POINT_METHODS),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"), index=True)
    label: Mapped[str] = mapped_column(Text)
    points: Mapped[list[Any]] = mapped_column(default=list)
    not_present: Mapped[bool] = mapped_column(Boolean, default=False)
    method: Mapped[str] = mapped_column(String(16), default="pointing")


class QAPair(TimestampMixin, Base):
    """A question and answer: from CapQA, ask-the-model, or point explanations."""

    __tablename__ = "qa_pairs"
    __table_args__ = (
        UniqueConstraint("caption_id", "model", "prompt_version", "idx"),
        _one_of("source", QA_SOURCES),
        _one_of("status", QA_STATUSES),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="SET NULL"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    assignment_id: Mapped[int | None] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"), index=True)
    caption_id: Mapped[int | None] = mapped_column(ForeignKey("captions.id", ondelete="SET NULL"))
    idx: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)
    question: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    messages: Mapped[list[Any]] = mapped_column(default=list)
    revisions: Mapped[list[Any]] = mapped_column(default=list)
    points: Mapped[list[Any]] = mapped_column(default=list)
    model: Mapped[str | None] = mapped_column(String(255))
    prompt_version: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class Review(TimestampMixin, Base):
    """A reviewer's verdict on any submission."""

    __tablename__ = "reviews"
    __table_args__ = (
        _one_of("verdict", VERDICTS),
        _one_of("target_type", REVIEW_TARGETS),
        Index(None, "target_type", "target_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    target_type: Mapped[str] = mapped_column(String(16))
    target_id: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    verdict: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")


REVIEW_TARGET_MODELS: dict[str, type[Base]] = {
    "recording": Recording, "transcript": Transcript, "caption": Caption,
    "point_set": PointSet, "qa_pair": QAPair, "assignment": Assignment,
}
"""The table of each review target type (``Review.target_type``)."""


class Job(Base):
    """One pipeline run: its parameters and its stats."""

    __tablename__ = "jobs"
    __table_args__ = (_one_of("status", JOB_STATUSES),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stats: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    # who runs it, so that a run killed outright can be told from a running one (pixmo.jobs)
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)


class IngestItem(TimestampMixin, Base):
    """Status of one input (file or URL) of an ingest run: what happened and why."""

    __tablename__ = "ingest_items"
    __table_args__ = (Index(None, "job_id", "status"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    source_ref: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64))
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))


class Export(TimestampMixin, Base):
    """A dataset snapshot written by an exporter."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    snapshot_id: Mapped[str] = mapped_column(String(64), unique=True)
    format: Mapped[str] = mapped_column(String(32))
    output_url: Mapped[str] = mapped_column(Text)
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    versions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    shards: Mapped[list[Any]] = mapped_column(default=list)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))


class WebSession(TimestampMixin, Base):
    """A browser login: the cookie holds a random token, the table its sha256 and CSRF token."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)


class LoginAttempt(Base):
    """One login try, for rate limiting by username and client address."""

    __tablename__ = "login_attempts"
    __table_args__ = (Index(None, "username", "ip", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    ip: Mapped[str] = mapped_column(String(64))
    ok: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)


# Dashboard (issue 7): covering indexes so per-project funnels count distinct images from the
# indexes alone and browse filters probe one index per image (revision 0004).
Index("ix_recordings_project_id_image_id", Recording.project_id, Recording.image_id)
Index("ix_captions_project_id_image_id_status", Caption.project_id, Caption.image_id, Caption.status)
Index("ix_point_sets_project_id_image_id", PointSet.project_id, PointSet.image_id)
Index("ix_qa_pairs_project_id_image_id_status", QAPair.project_id, QAPair.image_id, QAPair.status)
Index("ix_transcripts_recording_id_status", Transcript.recording_id, Transcript.status)
Index("ix_assignments_status_submitted_at", Assignment.status, Assignment.submitted_at)
# Partial indexes of the few flagged rows: flag counts and flagged lists skip the rest.
from sqlalchemy import text as _sql  # noqa: E402 - used only by the partial indexes below

Index("ix_transcripts_flagged", Transcript.id, sqlite_where=_sql("json_array_length(flags) > 0"),
      postgresql_where=_sql("jsonb_array_length(flags) > 0"))
Index("ix_captions_flagged", Caption.id, sqlite_where=_sql("json_array_length(flags) > 0"),
      postgresql_where=_sql("jsonb_array_length(flags) > 0"))


class LLMCacheEntry(TimestampMixin, Base):
    """A cached LLM reply, keyed by the sha256 of the whole request (model, messages, params).

    Only deterministic requests (temperature 0) are cached, so a rerun, a resumed run or a
    repeated input costs no generation (revision 0003).
    """

    __tablename__ = "llm_cache"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64), unique=True)
    model: Mapped[str] = mapped_column(String(255))
    response: Mapped[str] = mapped_column(Text)
    finish_reason: Mapped[str] = mapped_column(String(16), default="stop")
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
