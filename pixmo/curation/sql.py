"""Dialect-aware SQL pieces the curation queries share (SQLite and PostgreSQL).

Everything here builds expressions; nothing loads rows. JSON lists of flags and JSON metrics are
read inside the database so aggregates stay in SQL.
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, Float, Integer, and_, case, cast, exists, func, literal, literal_column, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from pixmo.db.models import Review
from pixmo.errors import ValidationError

_FLAG_RE = re.compile(r"^[a-z0-9_:.-]{1,64}$")


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def check_flag(flag: str) -> str:
    """``flag`` when it looks like a quality flag name, else ValidationError."""
    if not isinstance(flag, str) or not _FLAG_RE.match(flag):
        raise ValidationError(f"{flag!r} is not a flag name (lower-case letters, digits, '_')")
    return flag


def has_flag(session: Session, column, flag: str) -> ColumnElement[bool]:  # noqa: ANN001
    """True where the JSON list ``column`` contains the string ``flag``."""
    check_flag(flag)
    if dialect_of(session) == "postgresql":
        return type_coerce(column, JSONB).contains([flag])
    each = func.json_each(column).table_valued("value").alias("flag_each")
    return exists(select(literal(1)).select_from(each).where(each.c.value == flag))


def has_any_flag(session: Session, column) -> ColumnElement[bool]:  # noqa: ANN001
    """True where the JSON list ``column`` is not empty (written as the partial indexes of flagged
    rows are, with a literal 0, so the planner can use them)."""
    zero = literal_column("0")
    if dialect_of(session) == "postgresql":
        return func.jsonb_array_length(column) > zero
    return func.json_array_length(column) > zero


def day_of(session: Session, column) -> ColumnElement[str]:  # noqa: ANN001
    """The UTC calendar day of a timestamp column (``YYYY-MM-DD`` text on SQLite, a date on PostgreSQL;
    ``str()`` of either is the ISO day)."""
    if dialect_of(session) == "postgresql":
        return func.date(func.timezone("UTC", column))
    # SQLite stores UTC timestamps as ISO text: the day is its first ten characters
    return func.substr(column, 1, 10)


def word_count(column) -> ColumnElement[int]:  # noqa: ANN001
    """Words in a text column, counted as spaces and newlines plus one (two replaces per row, so it
    stays cheap on long captions; runs of spaces count extra)."""
    gaps = func.length(column) - func.length(func.replace(func.replace(column, " ", ""), "\n", ""))
    return case((column == "", 0), else_=gaps + 1)


def like_pattern(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, with %, _ and \\ escaped (use escape='\\')."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def is_current_review(review=Review) -> ColumnElement[bool]:  # noqa: ANN001
    """True for a review that no later review of the same target replaced (its current verdict)."""
    later = aliased(Review)
    return ~exists(
        select(literal(1)).where(
            and_(later.target_type == review.target_type, later.target_id == review.target_id, later.id > review.id)
        )
    )


def floor_of(session: Session, value) -> ColumnElement[int]:  # noqa: ANN001
    """``floor(value)`` for a non-negative value (SQLite's CAST truncates; PostgreSQL's rounds)."""
    if dialect_of(session) == "postgresql":
        return cast(func.floor(value), Integer)
    return cast(value, Integer)


def json_number(session: Session, column, *keys: str) -> ColumnElement[float]:  # noqa: ANN001
    """The first of ``keys`` in the JSON object ``column`` that holds a number, as a float (else NULL);
    keys holding lists or text are skipped instead of failing the cast."""
    whens = []
    for key in keys:
        if dialect_of(session) == "postgresql":
            value = type_coerce(column, JSONB)[key]
            whens.append((func.jsonb_typeof(value) == "number", cast(value.astext, Float)))
        else:
            path = f'$."{key}"'
            whens.append((func.json_type(column, path).in_(("integer", "real")), cast(func.json_extract(column, path), Float)))
    return case(*whens, else_=None)
