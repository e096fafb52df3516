"""Small query helpers shared by the library, pipelines and the app."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import join, select
from sqlalchemy.orm import Session

from pixmo.db.models import REVIEW_TARGET_MODELS, Base, Recording, Review, Transcript

ID_CHUNK = 900  # ids per IN (...): stays under every backend's bound-parameter limit


def _dialect_insert(session: Session, model: type[Base]):  # noqa: ANN202 - a dialect Insert
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - other dialects are not supported
        raise NotImplementedError(f"ON CONFLICT is not supported on {dialect}")
    return insert(model)


def upsert(session: Session, model: type[Base], row: dict[str, Any], conflict: Iterable[str]) -> int:
    """Insert ``row``, or update the row it collides with on the unique columns ``conflict``; its id.

    One ``INSERT ... ON CONFLICT DO UPDATE`` statement: two writers of the same row at once both
    succeed (a look-up then an insert lets the second fail on the unique constraint).
    """
    conflict = list(conflict)
    stmt = _dialect_insert(session, model).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=conflict, set_={k: stmt.excluded[k] for k in row if k not in conflict}
    ).returning(model.__table__.c.id)
    return session.execute(stmt).scalar_one()


def insert_ignore(session: Session, model: type[Base], rows: Sequence[dict[str, Any]], conflict: Iterable[str]) -> int:
    """Insert ``rows``, skipping any that collide on the unique columns ``conflict``.

    Uses ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL), so concurrent writers and reruns
    never duplicate and never fail. Rows may name different columns (the others get their
    defaults). Returns how many rows were inserted.
    """
    return len(insert_ignore_returning(session, model, rows, conflict))


def insert_ignore_returning(
    session: Session, model: type[Base], rows: Sequence[dict[str, Any]], conflict: Iterable[str], column: str | None = None
) -> list[Any]:
    """`insert_ignore`, returning ``column`` (default: the primary key) of each row actually inserted,
    so a caller can tell its rows from those a concurrent writer inserted first."""
    returned = model.__table__.c[column] if column else next(iter(model.__table__.primary_key.columns))
    # RETURNING yields only the rows that were inserted; rowcount is unreliable for executemany
    stmt = _dialect_insert(session, model).on_conflict_do_nothing(index_elements=list(conflict)).returning(returned)
    # one executemany per set of columns: it takes its columns from the first row, so a later row's
    # extra values would be dropped and a missing one fail the whole batch
    by_columns: dict[frozenset[str], list[dict[str, Any]]] = {}
    for row in rows:
        by_columns.setdefault(frozenset(row), []).append(row)
    return [value for group in by_columns.values() for value in session.connection().execute(stmt, group).scalars()]


def get_by(session: Session, model: type[Base], **where: Any):  # noqa: ANN201
    """The one row of ``model`` matching ``where``, or None."""
    return session.scalars(select(model).filter_by(**where)).one_or_none()


def review_target(target_type: str):  # noqa: ANN201 - (FROM clause, table, table)
    """(FROM clause, item table, owner table with the item's project_id, image_id and user_id) of a
    review target type: a transcript has no project, image or annotator of its own, its recording's count."""
    model = REVIEW_TARGET_MODELS[target_type]
    if model is Transcript:
        return join(Transcript, Recording, Recording.id == Transcript.recording_id), Transcript, Recording
    return model, model, model


def id_chunks(ids: Sequence[int]) -> Iterable[Sequence[int]]:
    """``ids`` in slices of `ID_CHUNK`, one IN (...) list each."""
    for i in range(0, len(ids), ID_CHUNK):
        yield ids[i : i + ID_CHUNK]


def newest_verdicts(session: Session, targets: dict[str, Iterable[int] | None]) -> dict[tuple[str, int], str]:
    """``(target_type, target_id) -> verdict`` of the newest review of each target: of the given ids
    of each target type, or of every target of that type for None."""
    out: dict[tuple[str, int], str] = {}
    for target_type, ids in targets.items():
        stmt = select(Review.target_id, Review.verdict).where(Review.target_type == target_type)
        if ids is not None:
            stmt = stmt.where(Review.target_id.in_(list(ids)))
        for target_id, verdict in session.execute(stmt.order_by(Review.created_at, Review.id)):
            out[(target_type, target_id)] = verdict  # in time order: the last one wins
    return out


def delete_with_reviews(session: Session, target_type: str, ids: Sequence[int]) -> int:
    """Delete these rows of a review target type and the reviews of them; returns the rows deleted.

    Reviews point at their target by type and id, with no foreign key: left behind, a verdict on a
    deleted row would stay in the history of nothing, or (SQLite reuses the highest deleted id)
    fall on the row written next in its place."""
    from sqlalchemy import delete

    model = REVIEW_TARGET_MODELS[target_type]
    deleted = 0
    for chunk in id_chunks(list(ids)):
        session.execute(delete(Review).where(Review.target_type == target_type, Review.target_id.in_(chunk)))
        deleted += session.execute(delete(model).where(model.id.in_(chunk))).rowcount
    return deleted
