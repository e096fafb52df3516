"""Gold accuracy for pointing: do an annotator's points on gold images match the gold answer?

A gold image is a ``project_images`` row with ``is_gold`` set; its ``gold_answer`` holds the
expected points per label, normalised to [0, 1]::

    {"points": {"red circle": [[0.25, 0.4], [0.7, 0.6]], "dog": []}}

(``{"label": "red circle", "points": [[0.25, 0.4]]}`` for a single label works too; an empty
list means "not present".) A point set on a gold image whose label the answer names is *scored*;
it is *correct* when it agrees on presence, has as many points as the answer, and its points can be
paired one-to-one with the gold points so that every pair is within ``tolerance`` (Euclidean
distance in normalised coordinates; 0.05 = 5 % of the image side). Gold accuracy is
correct / scored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from pixmo.db.models import PointSet, ProjectImage

DEFAULT_TOLERANCE = 0.05

Point = Sequence[float]


def gold_points(gold_answer: dict[str, Any] | None, label: str) -> list[tuple[float, float]] | None:
    """The gold points for ``label`` (empty: not present), or None when the answer does not name it."""
    if not isinstance(gold_answer, dict):
        return None
    points = gold_answer.get("points")
    if isinstance(points, dict):
        found = points.get(label)
    elif gold_answer.get("label") == label and isinstance(points, list):
        found = points
    else:
        return None
    if found is None:
        return None
    try:  # typed in by hand: a point that is not [x, y] leaves the image unscored rather than the page down
        return [(float(p[0]), float(p[1])) for p in found]
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def _within(a: Point, b: Point, tolerance: float) -> bool:
    return math.hypot(float(a[0]) - float(b[0]), float(a[1]) - float(b[1])) <= tolerance


def points_match(points: Sequence[Point], gold: Sequence[Point], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """True when ``points`` and ``gold`` pair one-to-one with every pair within ``tolerance``."""
    if len(points) != len(gold):
        return False
    near = [[j for j, g in enumerate(gold) if _within(p, g, tolerance)] for p in points]
    owner: dict[int, int] = {}  # gold index -> point index (bipartite matching by augmenting paths)

    def assign(i: int, seen: set[int]) -> bool:
        for j in near[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or assign(owner[j], seen):
                owner[j] = i
                return True
        return False

    return all(assign(i, set()) for i in range(len(points)))


def score_point_set(points: Sequence[Point], not_present: bool, gold: Sequence[Point], tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Whether one point set agrees with its gold points (presence, count and positions)."""
    if not gold:
        return bool(not_present) or not points
    return not not_present and points_match(points, gold, tolerance)


def gold_results(
    session: Session, project_id: int | None = None, tolerance: float = DEFAULT_TOLERANCE
) -> dict[int, tuple[int, int]]:
    """Per annotator id: (scored, correct) over point sets on gold images."""
    stmt = (
        select(PointSet.user_id, PointSet.label, PointSet.points, PointSet.not_present, ProjectImage.gold_answer)
        .join(ProjectImage, and_(ProjectImage.project_id == PointSet.project_id, ProjectImage.image_id == PointSet.image_id))
        .where(ProjectImage.is_gold.is_(True), PointSet.user_id.is_not(None))
    )
    if project_id is not None:
        stmt = stmt.where(PointSet.project_id == project_id)
    out: dict[int, tuple[int, int]] = {}
    # Gold items are a small, fixed share of a project, so scoring them in Python stays cheap.
    for user_id, label, points, not_present, answer in session.execute(stmt):
        gold = gold_points(answer, label)
        if gold is None:
            continue
        scored, correct = out.get(user_id, (0, 0))
        ok = score_point_set(points or [], not_present, gold, tolerance)
        out[user_id] = (scored + 1, correct + int(ok))
    return out
