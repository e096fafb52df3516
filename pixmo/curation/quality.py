"""Quality: histograms of transcript and caption metrics, flag counts, and flagged items.

Histograms are binned inside the database (one min/max query, then one ``GROUP BY bucket``), so
only ``bins`` rows come back however many transcripts there are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Float, case, cast, exists, func, literal, select, text, true
from sqlalchemy.orm import Session, aliased

from pixmo.curation.sql import (
    dialect_of, floor_of, has_any_flag, has_flag, in_project, is_current_review, json_number, keyset_page,
    review_in_project, word_count,
)
from pixmo.db.models import Caption, Recording, Review, Transcript
from pixmo.errors import ValidationError
from pixmo.llm.faithfulness import SCORE_KEYS
from pixmo.llm.faithfulness import stored_score as faithfulness_score  # noqa: F401 - curation's name for it

# metric -> (title, unit)
METRICS: dict[str, tuple[str, str]] = {
    "speech_s": ("Speech duration", "s"),
    "duration_s": ("Recording length", "s"),
    "wpm": ("Words per minute", "wpm"),
    "caption_words": ("Caption length", "words"),
    "avg_logprob": ("ASR confidence (avg log-prob)", "log p"),
    "no_speech_prob": ("No-speech probability", "p"),
    "faithfulness": ("Caption faithfulness", "supported share"),
}
SAMPLE_ROWS = 50_000


FLAGGED_SOURCES = ("transcript", "caption", "review")


@dataclass
class Histogram:
    """Counts per equal-width bin; ``edges`` has one more entry than ``counts``."""

    metric: str
    title: str
    unit: str
    sample_every: int = 1  # 1: every row; k: only the rows whose id is a multiple of k
    edges: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    total: int = 0
    mean: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per bin: its lower and upper edge, a label and the count."""
        return [
            {"lo": lo, "hi": hi, "bin": f"{lo:.3g}–{hi:.3g}", "count": n}
            for lo, hi, n in zip(self.edges, self.edges[1:], self.counts)
        ]


def _metric_source(session: Session, metric: str, project_id: int | None):  # noqa: ANN202
    """(value expression, base select, primary key) for ``metric``, restricted to ``project_id``."""
    if metric in ("speech_s", "wpm", "avg_logprob", "no_speech_prob"):
        value = Transcript.metrics[metric].as_float()
        stmt = select().select_from(Transcript).where(Transcript.status == "ok")
        if metric in ("speech_s", "wpm"):
            # the speech's own measures: once per recording (its newest transcript), however many
            # models transcribed it; the decoder's confidences stay one per transcript
            newer = aliased(Transcript)
            stmt = stmt.where(~exists().where(newer.recording_id == Transcript.recording_id, newer.status == "ok",
                                              newer.id > Transcript.id))
        if project_id is not None:
            stmt = stmt.join(Recording, Recording.id == Transcript.recording_id).where(Recording.project_id == project_id)
        return value, stmt, Transcript.id
    if metric == "duration_s":
        stmt = select().select_from(Recording).where(*in_project(Recording.project_id, project_id))
        return Recording.duration_s, stmt, Recording.id
    if metric in ("caption_words", "faithfulness"):
        if metric == "caption_words":
            value = word_count(Caption.text)
        else:
            value = json_number(session, Caption.faithfulness, *SCORE_KEYS)
        stmt = select().select_from(Caption).where(Caption.status == "ok", *in_project(Caption.project_id, project_id))
        return value, stmt, Caption.id
    raise ValidationError(f"metric must be one of {', '.join(METRICS)}, not {metric!r}")


def histogram(
    session: Session, metric: str, project_id: int | None = None, bins: int = 30, max_rows: int | None = SAMPLE_ROWS
) -> Histogram:
    """A histogram of ``metric`` (see ``METRICS``) with ``bins`` equal-width bins, rows without it skipped.

    One statement: the values are computed once into a materialised CTE, which gives the range
    and the per-bin counts. Past ``max_rows`` rows the histogram is drawn from a systematic
    sample, the rows whose id is a multiple of k (at most about ``max_rows`` of them; a count that
    stops at ``max_rows + 1`` decides, so a filter matching fewer rows is never sampled): the ids
    are generated and looked up by primary key, so the cost stays that of ``max_rows`` rows
    however large the table, and a histogram of 50,000 values looks like one of ten million.
    ``sample_every`` tells which k was used; ``max_rows=None`` never samples.
    """
    if not 1 <= bins <= 500:
        raise ValidationError("bins must be between 1 and 500")
    value, base, key = _metric_source(session, metric, project_id)
    title, unit = METRICS[metric]
    hist = Histogram(metric, title, unit)
    # sampled only when more than max_rows rows match (a count that stops there): a small project's
    # histogram is exact however large the table's ids grew through other projects
    if max_rows and session.scalar(select(func.count()).select_from(base.add_columns(key).limit(max_rows + 1).subquery())) > max_rows:
        highest = session.scalar(select(func.max(key))) or 0  # the primary key index answers this at once
        hist.sample_every = max(1, -(-highest // max_rows))
        if hist.sample_every > 1:
            ids = select(literal(hist.sample_every).label("x")).cte("sample_ids", recursive=True)
            ids = ids.union_all(select(ids.c.x + hist.sample_every).where(ids.c.x + hist.sample_every <= highest))
            base = base.join(ids, key == ids.c.x)
    values = base.add_columns(value.label("x")).cte("metric_values").prefix_with("MATERIALIZED")
    present = values.c.x.is_not(None)
    stats = select(
        func.min(values.c.x).label("lo"), func.max(values.c.x).label("hi"),
        func.count().label("n"), func.avg(values.c.x).label("mean"),
    ).where(present).cte("metric_range")
    span = cast(stats.c.hi - stats.c.lo, Float)
    bucket = case((stats.c.hi > stats.c.lo, floor_of(session, cast(values.c.x - stats.c.lo, Float) * bins / span)), else_=0)
    stmt = (
        select(stats.c.lo, stats.c.hi, stats.c.n, stats.c.mean, bucket.label("b"), func.count())
        .select_from(values).join(stats, true()).where(present)
        .group_by(bucket, stats.c.lo, stats.c.hi, stats.c.n, stats.c.mean)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return hist
    lo, hi, n, mean = float(rows[0][0]), float(rows[0][1]), int(rows[0][2]), float(rows[0][3])
    hist.total, hist.minimum, hist.maximum, hist.mean = n, lo, hi, mean
    if hi == lo:
        hist.edges, hist.counts = [lo, hi], [n]
        return hist
    counts = [0] * bins
    for *_, b, count in rows:
        counts[min(max(int(b), 0), bins - 1)] += int(count)  # the maximum falls in bucket == bins
    width = (hi - lo) / bins
    hist.edges = [lo + i * width for i in range(bins)] + [hi]
    hist.counts = counts
    return hist


def flag_counts(session: Session, project_id: int | None = None) -> list[dict[str, Any]]:
    """Rows ``{source, flag, count}``: how many transcripts and captions carry each flag."""
    postgres = dialect_of(session) == "postgresql"
    each = "jsonb_array_elements_text({col}) AS f(value)" if postgres else "json_each({col}) AS f"
    # the same predicate as the partial indexes of flagged rows, so only those rows are read
    flagged = "jsonb_array_length({col}) > 0" if postgres else "json_array_length({col}) > 0"
    queries = {
        "transcript": (
            f"SELECT f.value, count(*) FROM transcripts t JOIN recordings r ON r.id = t.recording_id, "
            f"{each.format(col='t.flags')} WHERE {flagged.format(col='t.flags')} {{where}} GROUP BY f.value",
            "r.project_id",
        ),
        "caption": (
            f"SELECT f.value, count(*) FROM captions c, {each.format(col='c.flags')} "
            f"WHERE {flagged.format(col='c.flags')} {{where}} GROUP BY f.value",
            "c.project_id",
        ),
    }
    rows = []
    for source, (sql, project_column) in queries.items():
        where = "" if project_id is None else f"AND {project_column} = :project_id"
        params = {} if project_id is None else {"project_id": project_id}
        for flag, n in session.execute(text(sql.format(where=where)), params):
            rows.append({"source": source, "flag": str(flag), "count": int(n)})
    rows.sort(key=lambda r: (-r["count"], r["source"], r["flag"]))
    return rows


def flagged_items(
    session: Session, source: str = "transcript", flag: str | None = None, project_id: int | None = None,
    after_id: int | None = None, limit: int = 50,
) -> tuple[list[dict[str, Any]], int | None]:
    """Flagged rows newest first (keyset on id): transcripts or captions with quality flags, or items
    whose current review verdict is "flagged". Returns (rows, next ``after_id`` or None)."""
    if source not in FLAGGED_SOURCES:
        raise ValidationError(f"source must be one of {', '.join(FLAGGED_SOURCES)}, not {source!r}")
    if source == "transcript":
        stmt = (
            select(Transcript.id, Recording.image_id, Recording.project_id, Transcript.flags, Transcript.text,
                   Transcript.created_at)
            .join(Recording, Recording.id == Transcript.recording_id)
        )
        key, flags_col, project_col = Transcript.id, Transcript.flags, Recording.project_id
    elif source == "caption":
        stmt = select(Caption.id, Caption.image_id, Caption.project_id, Caption.flags, Caption.text, Caption.created_at)
        key, flags_col, project_col = Caption.id, Caption.flags, Caption.project_id
    else:
        stmt = select(Review.id, Review.image_id, Review.target_type, Review.target_id, Review.reason,
                      Review.created_at).where(Review.verdict == "flagged", is_current_review(Review),
                                               Review.target_type != "assignment")  # its items are listed
        stmt = stmt.where(*review_in_project(project_id))  # reviews of the project's items
        key, flags_col, project_col = Review.id, None, None
    if flags_col is not None:
        stmt = stmt.where(has_any_flag(session, flags_col))  # the partial index of flagged rows
        if flag:
            stmt = stmt.where(has_flag(session, flags_col, flag))
        stmt = stmt.where(*in_project(project_col, project_id))
    result, more = keyset_page(session, stmt, key, after_id, limit, descending=True)
    rows: list[dict[str, Any]] = []
    for r in result:
        if source == "review":
            rows.append({"id": r[0], "image_id": r[1], "target": f"{r[2]} #{r[3]}", "reason": r[4], "created_at": r[5]})
        else:
            snippet = " ".join((r[4] or "").split())
            rows.append({"id": r[0], "image_id": r[1], "project_id": r[2], "flags": list(r[3] or []),
                         "text": snippet[:160], "created_at": r[5]})
    return rows, (rows[-1]["id"] if more else None)
