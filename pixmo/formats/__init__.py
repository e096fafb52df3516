"""Data formats at the edges: point coordinates and Molmo point text.

The PixMo Hugging Face row schemas live in `schemas.pixmo_hf` (the data contracts package).
"""

from pixmo.formats.points import (
    NONE_TEXT,
    CountAnswer,
    Point,
    PointRef,
    escape_label,
    from_pixels,
    from_pixmo100,
    parse_count,
    parse_points,
    render_count,
    render_none,
    render_points,
    sort_points,
    to_pixels,
    to_pixmo100,
    unescape_label,
    validate_points,
)

__all__ = [
    "CountAnswer",
    "NONE_TEXT",
    "Point",
    "PointRef",
    "escape_label",
    "from_pixels",
    "from_pixmo100",
    "parse_count",
    "parse_points",
    "render_count",
    "render_none",
    "render_points",
    "sort_points",
    "to_pixels",
    "to_pixmo100",
    "unescape_label",
    "validate_points",
]
