"""What an export selects (`ExportFilters`) and how webdataset shards are cut (`WebDatasetOptions`)."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from pixmo.db.models import as_utc
from pixmo.errors import ValidationError

REVIEW_STATUSES = ("approved", "rejected", "pending", "flagged")

_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(value: str | int | float) -> int:
    """Bytes from ``1000000``, ``3e9``, ``500M``, ``1G``, ``64MiB`` (K/M/G are decimal, Ki/Mi/Gi binary)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ValidationError(f"not a size: {value!r} (use bytes, or a number with K, M, G, Ki, Mi, Gi)")
        number = float(m.group(1)) * _UNITS[(m.group(2) or "").lower()]
    if isinstance(number, float) and not math.isfinite(number):
        raise ValidationError(f"not a size: {value!r} (not a finite number)")
    size = int(number)
    if size <= 0:
        raise ValidationError(f"size must be positive, got {value!r}")
    return size


def parse_time(value: str | dt.datetime | dt.date | None) -> dt.datetime | None:
    """An aware UTC datetime from an ISO date or datetime (naive values are taken as UTC)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    elif isinstance(value, dt.date):
        parsed = dt.datetime(value.year, value.month, value.day)
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValidationError(f"not an ISO date or datetime: {value!r} (e.g. 2024-06-01 or 2024-06-01T12:00)") from None
    return as_utc(parsed)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


@dataclass(frozen=True)
class ExportFilters:
    """Which images become samples.

    - ``projects``: images attached to any of these projects (all images when empty).
    - ``review_status``: images whose review status (see `pixmo.export.records.review_status`) is one of these.
    - ``exclude_flags``: leave out images with a transcript or caption carrying any of these quality flags.
    - ``since``: images with activity (the image or any of its rows created) at or after this time.
    - ``until``: the snapshot time: only images and rows created before it are exported at all.
    - ``annotated_only``: leave out images with no caption, transcript, point set or QA pair.
    """

    projects: tuple[str, ...] = ()
    review_status: tuple[str, ...] = ()
    exclude_flags: tuple[str, ...] = ()
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    annotated_only: bool = True

    def __post_init__(self) -> None:
        for name in ("projects", "review_status", "exclude_flags"):
            value = getattr(self, name)
            # one name given as a plain string is that name, not its letters
            object.__setattr__(self, name, tuple(sorted({value} if isinstance(value, str) else set(value))))
        object.__setattr__(self, "since", parse_time(self.since))
        object.__setattr__(self, "until", parse_time(self.until))
        if self.exclude_flags:
            from pixmo.curation.sql import check_flag  # the curation package is not needed otherwise

            for flag in self.exclude_flags:
                check_flag(flag)
        bad = [s for s in self.review_status if s not in REVIEW_STATUSES]
        if bad:
            raise ValidationError(f"unknown review status {bad[0]!r}; use one of {', '.join(REVIEW_STATUSES)}")
        if self.since and self.until and self.since >= self.until:
            raise ValidationError("--since must be before --until")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form, as recorded in the manifest and the exports row."""
        return {
            "projects": list(self.projects),
            "review_status": list(self.review_status),
            "exclude_flags": list(self.exclude_flags),
            "since": _iso(self.since),
            "until": _iso(self.until),
            "annotated_only": self.annotated_only,
        }


def default_workers() -> int:
    """Shard-writing processes by default: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass(frozen=True)
class WebDatasetOptions:
    """How samples are written: shard limits, resizing, audio, the validation share, parallelism.

    ``maxsize`` is checked against an estimate made before writing (image and audio bytes plus
    tar headers and a JSON allowance), so that shards can be planned up front and written in
    parallel; a shard may exceed it by a few KiB per sample.
    """

    maxcount: int = 10_000
    maxsize: int = 1_000_000_000
    max_side: int | None = None
    with_audio: bool = False
    val_fraction: float = 0.05
    workers: int = field(default_factory=default_workers)

    def __post_init__(self) -> None:
        object.__setattr__(self, "maxsize", parse_size(self.maxsize))
        if self.maxcount < 1:
            raise ValidationError("--maxcount must be at least 1")
        if self.max_side is not None and self.max_side < 8:
            raise ValidationError("--max-side must be at least 8 pixels")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValidationError("--val-fraction must be in [0, 1)")
        if self.workers < 1:
            raise ValidationError("--workers must be at least 1")

    def content_dict(self) -> dict[str, Any]:
        """The options that change the bytes written (workers does not)."""
        out = asdict(self)
        out.pop("workers")
        return out
