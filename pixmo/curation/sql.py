"""SQL pieces the curation queries share, dialect-aware where needed (SQLite and PostgreSQL).

Everything here builds expressions, except ``keyset_page``, which runs one page. JSON lists of
flags and JSON metrics are read inside the database so aggregates stay in SQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import (
    ColumnElement, Float, Integer, Select, and_, case, cast, exists, func, literal, literal_column, or_, select,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session, aliased

from pixmo.db.models import REVIEW_TARGETS, Review
from pixmo.db.queries import review_target
from pixmo.db.session import UNICODE_LOWER
from pixmo.errors import ValidationError

_FLAG_RE = re.compile(r"^[a-z0-9_:.-]{1,64}$")
# the quality flags the toolkit's own steps write: pixmo.asr.quality.FLAGS, then
# pixmo.llm.faithfulness.FLAGS (written out: importing pixmo.asr here would load numpy; a test holds
# them together); other flags may be stored by hand
KNOWN_FLAGS = ("no_speech", "too_short", "low_confidence", "repetition", "wpm_outlier", "unfaithful", "incomplete")
MAX_PAGE = 500


def dialect_of(session: Session) -> str:
    return session.get_bind().dialect.name


def check_flag(flag: str) -> str:
    """``flag`` when it looks like a quality flag name, else ValidationError: a guard against typing
    one wrong (``--exclude-flag LOW_CONFIDENCE`` would exclude nothing), not for names read back."""
    if not isinstance(flag, str) or not _FLAG_RE.match(flag):
        raise ValidationError(f"{flag!r} is not a flag name (lower-case letters, digits, '_')")
    return flag


def has_flag(session: Session, column, flag: str) -> ColumnElement[bool]:  # noqa: ANN001
    """True where the JSON list ``column`` contains the string ``flag`` (any string: it is bound, and
    flags stored by hand need not look like the pipelines' own)."""
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


def contains_text(session: Session, column, text: str) -> ColumnElement[bool]:  # noqa: ANN001
    """``column`` holds ``text``, ignoring case in every script: PostgreSQL's ILIKE folds all of
    them, SQLite's LIKE only A-Z, so there both sides go through Python's ``str.lower``."""
    if session.get_bind().dialect.name == "sqlite":
        return getattr(func, UNICODE_LOWER)(column).like(like_pattern(text.lower()), escape="\\")
    return column.ilike(like_pattern(text), escape="\\")


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


def in_project(column, project_id: int | None) -> list[ColumnElement[bool]]:  # noqa: ANN001
    """``[column == project_id]``, or no condition when ``project_id`` is None (for ``.where(*...)``)."""
    return [] if project_id is None else [column == project_id]


def review_in_project(project_id: int | None) -> list[ColumnElement[bool]]:
    """Conditions keeping reviews of items of project ``project_id`` (none when it is None): a review
    names its target, not the target's project, so each target type is probed by primary key."""
    if project_id is None:
        return []
    probes = []
    for target_type in REVIEW_TARGETS:
        source, item, owner = review_target(target_type)
        owned = select(literal(1)).select_from(source).where(item.id == Review.target_id, owner.project_id == project_id)
        probes.append(and_(Review.target_type == target_type, exists(owned)))
    return [or_(*probes)]


def reviewed_items(
    columns: Callable[[Any], Iterable[Any]], project_id: int | None = None, current_only: bool = False,
    targets: Iterable[str] = REVIEW_TARGETS,
) -> list[Select]:
    """One SELECT per target type of its items joined to their reviews (only current verdicts with
    ``current_only``), items of ``project_id`` when given; combine them with ``union_all``.

    ``columns(owner)`` gives the selected columns, ``owner`` being the table with the item's
    project_id, image_id and user_id (the recording, for a transcript).
    """
    parts = []
    for target_type in targets:
        source, item, owner = review_target(target_type)
        on = and_(Review.target_type == target_type, Review.target_id == item.id)
        if current_only:
            on = and_(on, is_current_review(Review))
        stmt = select(*columns(owner)).select_from(source).join(Review, on)
        parts.append(stmt.where(*in_project(owner.project_id, project_id)))
    return parts


def check_limit(limit: int) -> int:
    """``limit`` when it is a page size from 1 to ``MAX_PAGE``, else ValidationError."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE}")
    return limit


def keyset_page(
    session: Session, stmt: Select, key, after: Any, limit: int, descending: bool = False, scalars: bool = False,  # noqa: ANN001
) -> tuple[list[Any], bool]:
    """Up to ``limit`` rows of ``stmt`` past the cursor ``after`` in ``key`` order (``descending``: largest
    key first), and whether more follow; the next cursor is the last row's key. ``scalars``: the first
    column of each row, as ``Session.scalars`` gives.

    ``WHERE key > :after ORDER BY key LIMIT n + 1`` walks an index, so page 1000 costs what page 1 costs.
    """
    check_limit(limit)
    if after is not None:
        stmt = stmt.where(key < after if descending else key > after)
    stmt = stmt.order_by(key.desc() if descending else key).limit(limit + 1)
    rows = list(session.scalars(stmt) if scalars else session.execute(stmt))
    return rows[:limit], len(rows) > limit
