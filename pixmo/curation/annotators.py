"""Per-annotator statistics: throughput, active time, speech, rejection rate, gold accuracy.

One grouped query per source table (assignments, recordings, transcripts, point sets, QA,
reviews); rows are merged per user in Python, so the cost is one pass over each table's index
and the output has one row per annotator.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import case, distinct, func, select, union_all
from sqlalchemy.orm import Session

from pixmo.curation.gold import DEFAULT_TOLERANCE, gold_results
from pixmo.curation.sql import day_of, in_project, reviewed_items
from pixmo.db.models import REVIEW_TARGETS, Assignment, PointSet, QAPair, Recording, Review, Transcript, User

# Columns checked for outliers: a robust (median / MAD) z-score beyond OUTLIER_Z marks the cell.
OUTLIER_COLUMNS = ("items_per_hour", "active_s_per_item", "speech_s_per_recording", "wpm_mean", "rejection_rate", "gold_accuracy")
OUTLIER_Z = 3.5


@dataclass
class AnnotatorStats:
    """What one annotator did; rates are None when there is nothing to divide by."""

    user_id: int
    username: str
    role: str
    submitted: int = 0
    skipped: int = 0
    expired: int = 0
    active_s: float = 0.0
    active_days: int = 0
    recordings: int = 0
    audio_s: float = 0.0
    speech_s: float = 0.0
    speech_recordings: int = 0  # recordings with a measured speech time (transcribed), what speech_s sums over
    wpm_mean: float | None = None
    point_sets: int = 0
    qa_pairs: int = 0
    approved: int = 0
    rejected: int = 0
    flagged: int = 0
    gold_scored: int = 0
    gold_correct: int = 0
    outliers: list[str] = field(default_factory=list)

    @property
    def items_per_hour(self) -> float | None:
        """Submitted items per hour of active time."""
        return round(3600.0 * self.submitted / self.active_s, 2) if self.active_s > 0 else None

    @property
    def items_per_day(self) -> float | None:
        return round(self.submitted / self.active_days, 2) if self.active_days else None

    @property
    def active_s_per_item(self) -> float | None:
        return round(self.active_s / self.submitted, 1) if self.submitted else None

    @property
    def speech_s_per_recording(self) -> float | None:
        """Speech per transcribed recording: one not transcribed yet (or whose ASR failed) has no speech time,
        not a speech time of zero."""
        return round(self.speech_s / self.speech_recordings, 1) if self.speech_recordings else None

    @property
    def rejection_rate(self) -> float | None:
        """Rejected / (approved + rejected) over the current verdicts on this annotator's items."""
        judged = self.approved + self.rejected
        return round(self.rejected / judged, 3) if judged else None

    @property
    def gold_accuracy(self) -> float | None:
        return round(self.gold_correct / self.gold_scored, 3) if self.gold_scored else None

    def as_row(self) -> dict[str, Any]:
        """A flat dict for a table: the counts, the derived rates and the outlier columns."""
        return {
            "user_id": self.user_id, "annotator": self.username, "role": self.role,
            "submitted": self.submitted, "skipped": self.skipped, "expired": self.expired,
            "items_per_hour": self.items_per_hour, "items_per_day": self.items_per_day,
            "active_s_per_item": self.active_s_per_item, "recordings": self.recordings,
            "audio_s": round(self.audio_s, 1), "speech_s": round(self.speech_s, 1),
            "speech_s_per_recording": self.speech_s_per_recording, "wpm_mean": self.wpm_mean,
            "point_sets": self.point_sets, "qa_pairs": self.qa_pairs,
            "approved": self.approved, "rejected": self.rejected, "flagged": self.flagged,
            "rejection_rate": self.rejection_rate, "gold_scored": self.gold_scored,
            "gold_accuracy": self.gold_accuracy, "outliers": ", ".join(self.outliers),
        }


def _verdicts(session: Session, project_id: int | None) -> dict[int, dict[str, int]]:
    """Current verdicts per annotator, over every kind of item an annotator makes."""
    parts = reviewed_items(
        lambda item: (item.user_id.label("user_id"), Review.verdict.label("verdict")), project_id, current_only=True,
        # captions are machine-made (no annotator); a verdict on a whole task is also written on each
        # of its items, which count it (the task's own row would count it twice)
        targets=[t for t in REVIEW_TARGETS if t not in ("caption", "assignment")],
    )
    both = union_all(*parts).subquery()
    out: dict[int, dict[str, int]] = {}
    for user_id, verdict, n in session.execute(
        select(both.c.user_id, both.c.verdict, func.count()).group_by(both.c.user_id, both.c.verdict)
    ):
        if user_id is not None:
            out.setdefault(user_id, {})[verdict] = int(n)
    return out


def robust_z(values: list[float]) -> list[float]:
    """Modified z-scores (0.6745 (x - median) / MAD); MAD 0 falls back to the mean absolute deviation."""
    if len(values) < 3:
        return [0.0] * len(values)
    med = statistics.median(values)
    deviations = [abs(v - med) for v in values]
    mad = statistics.median(deviations)
    if mad > 0:
        return [0.6745 * (v - med) / mad for v in values]
    mean_ad = statistics.fmean(deviations)
    if mean_ad > 0:
        return [(v - med) / (1.253314 * mean_ad) for v in values]
    return [0.0] * len(values)


def mark_outliers(rows: list[AnnotatorStats], columns: tuple[str, ...] = OUTLIER_COLUMNS, z: float = OUTLIER_Z) -> None:
    """Set ``outliers`` on each row to the columns where it lies beyond ``z`` robust z-scores."""
    for column in columns:
        present = [(r, getattr(r, column)) for r in rows if getattr(r, column) is not None]
        for (row, _), score in zip(present, robust_z([float(v) for _, v in present])):
            if abs(score) > z:
                row.outliers.append(column)


def annotator_stats(
    session: Session, project_id: int | None = None, gold_tolerance: float = DEFAULT_TOLERANCE
) -> list[AnnotatorStats]:
    """One row per user who made anything (in ``project_id`` when given), outliers marked."""
    rows: dict[int, AnnotatorStats] = {}

    def row(user_id: int) -> AnnotatorStats:
        if user_id not in rows:
            rows[user_id] = AnnotatorStats(user_id, "", "")
        return rows[user_id]

    A = Assignment
    submitted = A.status == "submitted"
    stmt = select(
        A.user_id,
        func.sum(case((submitted, 1), else_=0)),
        func.sum(case((A.status == "skipped", 1), else_=0)),
        func.sum(case((A.status == "expired", 1), else_=0)),
        func.sum(case((submitted, A.active_seconds), else_=0.0)),
        func.count(distinct(case((submitted, day_of(session, A.submitted_at)), else_=None))),
    ).group_by(A.user_id)
    for user_id, n_sub, n_skip, n_exp, active, days in session.execute(stmt.where(*in_project(A.project_id, project_id))):
        r = row(user_id)
        r.submitted, r.skipped, r.expired = int(n_sub or 0), int(n_skip or 0), int(n_exp or 0)
        r.active_s, r.active_days = float(active or 0.0), int(days or 0)

    stmt = select(Recording.user_id, func.count(), func.sum(Recording.duration_s)).group_by(Recording.user_id)
    for user_id, n, seconds in session.execute(stmt.where(*in_project(Recording.project_id, project_id))):
        if user_id is not None:
            row(user_id).recordings, row(user_id).audio_s = int(n), float(seconds or 0.0)

    # One transcript per recording counts (several ASR models may have transcribed it).
    per_recording = (
        select(
            Transcript.recording_id,
            func.max(Transcript.metrics["speech_s"].as_float()).label("speech_s"),
            func.max(Transcript.metrics["wpm"].as_float()).label("wpm"),
        )
        .where(Transcript.status == "ok")
        .group_by(Transcript.recording_id)
        .subquery()
    )
    stmt = (
        select(Recording.user_id, func.sum(per_recording.c.speech_s), func.count(per_recording.c.speech_s),
               func.avg(per_recording.c.wpm))
        .join(per_recording, per_recording.c.recording_id == Recording.id)
        .group_by(Recording.user_id)
    )
    for user_id, speech, measured, wpm in session.execute(stmt.where(*in_project(Recording.project_id, project_id))):
        if user_id is not None:
            row(user_id).speech_s, row(user_id).speech_recordings = float(speech or 0.0), int(measured or 0)
            row(user_id).wpm_mean = round(float(wpm), 1) if wpm is not None else None

    stmt = select(PointSet.user_id, func.count()).group_by(PointSet.user_id)
    for user_id, n in session.execute(stmt.where(*in_project(PointSet.project_id, project_id))):
        if user_id is not None:
            row(user_id).point_sets = int(n)
    # questions answered and accepted (not every question asked, nor abandoned exchanges)
    stmt = select(QAPair.user_id, func.count()).where(QAPair.status == "accepted").group_by(QAPair.user_id)
    for user_id, n in session.execute(stmt.where(*in_project(QAPair.project_id, project_id))):
        if user_id is not None:
            row(user_id).qa_pairs = int(n)

    for user_id, verdicts in _verdicts(session, project_id).items():
        r = row(user_id)
        r.approved, r.rejected, r.flagged = (verdicts.get(v, 0) for v in ("approved", "rejected", "flagged"))
    for user_id, (scored, correct) in gold_results(session, project_id, gold_tolerance).items():
        row(user_id).gold_scored, row(user_id).gold_correct = scored, correct

    if not rows:
        return []
    for user_id, username, role in session.execute(select(User.id, User.username, User.role).where(User.id.in_(rows))):
        rows[user_id].username, rows[user_id].role = username, role
    out = sorted(rows.values(), key=lambda r: r.username)
    mark_outliers(out)
    return out
