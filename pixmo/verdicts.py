"""Which rows may be trained on, by their newest review verdict (no heavy imports: the loader uses it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

UNUSABLE_VERDICTS = frozenset({"rejected", "flagged"})
"""A row whose newest verdict is one of these is left out of captions, parquet rows and targets."""


def is_usable(verdicts: dict[tuple[str, int], str], target_type: str, target_id: int) -> bool:
    """Whether a row may be trained on, given ``(target_type, target_id) -> newest verdict``."""
    return verdicts.get((target_type, target_id)) not in UNUSABLE_VERDICTS


def record_verdicts(reviews: Iterable[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """``(target_type, target_id) -> verdict`` of an export record's reviews (in time order: the last wins)."""
    return {(r["target_type"], r["target_id"]): r["verdict"] for r in reviews}
