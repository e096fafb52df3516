"""Point coordinates and Molmo point text.

Canonical points are normalised floats in [0, 1] with the origin at the top-left corner of the
image (x to the right, y down). Conversions to PixMo's 0-100 scale, to pixels and to Molmo's point
text happen only here, at the edges.

Molmo text (as the released Molmo data formatter writes it)::

    <point x="12.3" y="45.6" alt="label">label</point>
    <points x1="10.0" y1="20.0" x2="30.0" y2="40.0" alt="label">label</points>
    Counting the <points ...>label</points> shows a total of 2.
    There are none.

Coordinates are on the 0-100 scale with one decimal; several points are sorted by x then y (on
the rounded values, as Molmo does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from pixmo.errors import ValidationError

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

NONE_TEXT = "There are none."


class Point(NamedTuple):
    """One point; normalised [0, 1] unless a function says otherwise."""

    x: float
    y: float


class PointRef(NamedTuple):
    """One <point>/<points> element found in text: its label, alt text and normalised points."""

    label: str
    alt: str
    points: list[Point]


class CountAnswer(NamedTuple):
    """A parsed counting answer: the stated total and the points (normalised) it cites."""

    count: int
    label: str | None
    points: list[Point]


PointLike = Sequence[float]


# --------------------------------------------------------------------------- validation


def _coord(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise ValidationError(f"{what} is a bool, not a number: {value!r}")
    if not isinstance(value, (int, float)):
        try:
            value = float(value)  # numpy scalars, Decimal, numeric strings
        except (TypeError, ValueError):
            raise ValidationError(f"{what} is not a number: {value!r}") from None
    try:
        v = float(value)
    except OverflowError:  # an integer beyond any float
        raise ValidationError(f"{what} is far out of range: {str(value)[:20]}…") from None
    if not math.isfinite(v):
        raise ValidationError(f"{what} is not finite: {value!r}")
    return v


def _checked(points: Iterable[PointLike], max_x: float, max_y: float, scale: str) -> list[Point]:
    out: list[Point] = []
    for i, p in enumerate(points):
        try:
            x, y = p
        except (TypeError, ValueError):
            raise ValidationError(f"point {i} is not an (x, y) pair: {p!r}") from None
        fx = _coord(x, f"point {i} x")
        fy = _coord(y, f"point {i} y")
        if not (0.0 <= fx <= max_x and 0.0 <= fy <= max_y):
            raise ValidationError(
                f"point {i} ({fx}, {fy}) is outside the {scale} range [0, {max_x:g}] x [0, {max_y:g}]"
            )
        # + 0.0 turns -0.0 into 0.0 so that it never renders as "-0.0"
        out.append(Point(fx + 0.0, fy + 0.0))
    return out


def _checked_size(width: float, height: float) -> tuple[float, float]:
    w = _coord(width, "width")
    h = _coord(height, "height")
    if w <= 0 or h <= 0:
        raise ValidationError(f"image size must be positive, got {width!r} x {height!r}")
    return w, h


def validate_points(points: Iterable[PointLike]) -> list[Point]:
    """Return normalised points as `Point`s; raise ValidationError unless each is in [0, 1]."""
    return _checked(points, 1.0, 1.0, "normalised")


# --------------------------------------------------------------------------- conversions


class PointShapeError(ValidationError):
    """Points that are not a list of [x, y] pairs of numbers."""


def stored_points(points: object) -> list[list[float]]:
    """Points sent by a person as they are stored: a list of [x, y] pairs of numbers in [0, 1],
    rounded to 5 places. PointShapeError when ``points`` is not such a list (strings and booleans
    are not numbers); ValidationError when a point lies outside [0, 1]."""
    if not isinstance(points, list) or any(
            not isinstance(p, (list, tuple)) or len(p) != 2
            or any(isinstance(c, bool) or not isinstance(c, (int, float)) for c in p) for p in points):
        raise PointShapeError("points must be a list of [x, y] pairs of numbers")
    return [[round(p.x, 5), round(p.y, 5)] for p in validate_points(points)]


def to_pixmo100(points: Iterable[PointLike]) -> list[Point]:
    """Normalised [0, 1] points -> PixMo's 0-100 scale (not rounded)."""
    return [Point(p.x * 100.0, p.y * 100.0) for p in validate_points(points)]


def from_pixmo100(points: Iterable[PointLike]) -> list[Point]:
    """PixMo 0-100 points -> normalised [0, 1]; raise ValidationError when out of range."""
    return [Point(p.x / 100.0, p.y / 100.0) for p in _checked(points, 100.0, 100.0, "0-100")]


def to_pixels(points: Iterable[PointLike], width: float, height: float) -> list[Point]:
    """Normalised points -> pixel coordinates (x * width, y * height), origin top-left."""
    w, h = _checked_size(width, height)
    return [Point(p.x * w, p.y * h) for p in validate_points(points)]


def from_pixels(points: Iterable[PointLike], width: float, height: float) -> list[Point]:
    """Pixel coordinates -> normalised; each point must lie in [0, width] x [0, height]."""
    w, h = _checked_size(width, height)
    return [Point(p.x / w, p.y / h) for p in _checked(points, w, h, "pixel")]


# --------------------------------------------------------------------------- escaping

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}
_ESCAPE_RE = re.compile(r'[&<>"]')
_ENTITY_RE = re.compile(r"&(amp|lt|gt|quot|apos|#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6});")
_NAMED = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def escape_label(text: str) -> str:
    """Escape &, <, > and " so that the text is safe in an XML attribute or element body."""
    return _ESCAPE_RE.sub(lambda m: _ESCAPES[m.group(0)], text)


def _unentity(m: re.Match[str]) -> str:
    name = m.group(1)
    if name in _NAMED:
        return _NAMED[name]
    code = int(name[2:], 16) if name[1] in "xX" else int(name[1:])
    try:
        return chr(code)
    except (ValueError, OverflowError):
        return m.group(0)


def unescape_label(text: str) -> str:
    """Undo `escape_label` (also accepts &apos; and numeric character references)."""
    return _ENTITY_RE.sub(_unentity, text)


# --------------------------------------------------------------------------- rendering


def _fmt(v: float) -> str:
    s = f"{v:.1f}"
    return "0.0" if s == "-0.0" else s


def _display_key(p: Point) -> tuple[float, float]:
    return (float(_fmt(p.x)), float(_fmt(p.y)))


def sort_points(points: Iterable[PointLike]) -> list[Point]:
    """Sort normalised points by x then y as they appear in Molmo text (on 0-100, one decimal)."""
    pts = validate_points(points)
    return sorted(pts, key=lambda p: _display_key(Point(p.x * 100.0, p.y * 100.0)))


def render_none() -> str:
    """The Molmo answer when nothing is there: ``There are none.``"""
    return NONE_TEXT


def render_points(points: Iterable[PointLike], label: str, alt: str | None = None) -> str:
    """Render normalised points as a Molmo ``<point>`` (one) or ``<points>`` (several) element.

    `alt` defaults to `label`; both are XML-escaped. No points renders ``There are none.``
    """
    pts = to_pixmo100(points)
    if not pts:
        return render_none()
    pts.sort(key=_display_key)
    alt_text = escape_label(label if alt is None else alt)
    body = escape_label(label)
    if len(pts) == 1:
        p = pts[0]
        return f'<point x="{_fmt(p.x)}" y="{_fmt(p.y)}" alt="{alt_text}">{body}</point>'
    coords = " ".join(f'x{i}="{_fmt(p.x)}" y{i}="{_fmt(p.y)}"' for i, p in enumerate(pts, start=1))
    return f'<points {coords} alt="{alt_text}">{body}</points>'


def render_count(points: Iterable[PointLike], label: str, alt: str | None = None) -> str:
    """Render a Molmo counting answer: ``Counting the <points ...>label</points> shows a total of N.``

    One point uses a ``<point>`` element (as Molmo does); no points gives ``There are none.``
    """
    pts = validate_points(points)
    if not pts:
        return render_none()
    return f"Counting the {render_points(pts, label, alt)} shows a total of {len(pts)}."


# --------------------------------------------------------------------------- parsing

_ATTR_SRC = r"""[A-Za-z_][\w:.-]*\s*=\s*(?:"[^"]*"|'[^']*')"""
_ELEMENT_RE = re.compile(
    rf"<(?P<tag>points?)(?P<attrs>(?:\s+{_ATTR_SRC})*)\s*(?:/>|>(?P<body>.*?)</(?P=tag)\s*>)",
    re.DOTALL,
)
_ATTR_RE = re.compile(r"""([A-Za-z_][\w:.-]*)\s*=\s*(?:"([^"]*)"|'([^']*)')""")
_INDEXED_RE = re.compile(r"([xy])(\d+)\Z")
_COUNT_RE = re.compile(r"\btotal\s+of\s+(\d+)", re.IGNORECASE)
_NONE_RE = re.compile(r"\bthere\s+are\s+none\b", re.IGNORECASE)


def _element_points(attrs: dict[str, str]) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if "x" in attrs or "y" in attrs:
        if "x" not in attrs or "y" not in attrs:
            raise ValidationError("point element has only one of x and y")
        pairs.append((attrs["x"], attrs["y"]))
    xs: dict[int, str] = {}
    ys: dict[int, str] = {}
    for name, value in attrs.items():
        m = _INDEXED_RE.match(name)
        if m:
            (xs if m.group(1) == "x" else ys)[int(m.group(2))] = value
    if set(xs) != set(ys):
        raise ValidationError(f"points element has unpaired coordinates: x{sorted(xs)} y{sorted(ys)}")
    pairs.extend((xs[i], ys[i]) for i in sorted(xs))
    return pairs


def _parse_element(m: re.Match[str]) -> PointRef:
    attrs = {a.group(1): (a.group(2) if a.group(2) is not None else a.group(3))
             for a in _ATTR_RE.finditer(m.group("attrs"))}
    raw = _element_points(attrs)
    if not raw:
        raise ValidationError(f"<{m.group('tag')}> element without coordinates: {m.group(0)[:80]!r}")
    pts = from_pixmo100((_coord(x.strip(), "x"), _coord(y.strip(), "y")) for x, y in raw)
    body = m.group("body")
    alt = unescape_label(attrs["alt"]) if "alt" in attrs else None
    # a self-closing element has no body: its label is its alt text
    label = unescape_label(body) if body is not None else (alt or "")
    return PointRef(label=label, alt=label if alt is None else alt, points=pts)


def parse_points(text: str, *, strict: bool = True) -> list[PointRef]:
    """Find every Molmo ``<point>``/``<points>`` element in free text, in order of appearance.

    Coordinates are read on the 0-100 scale and returned normalised; labels are unescaped.
    With `strict` (the default) a malformed or out-of-range element raises ValidationError;
    otherwise it is skipped.
    """
    refs: list[PointRef] = []
    for m in _ELEMENT_RE.finditer(text):
        try:
            refs.append(_parse_element(m))
        except ValidationError:
            if strict:
                raise
    return refs


def parse_count(text: str, *, strict: bool = True) -> CountAnswer:
    """Parse a Molmo counting answer (or ``There are none.``) into a `CountAnswer`.

    The count is the stated total ("... shows a total of N."); points and label come from the
    cited point elements. Raise ValidationError when the text states no count.
    """
    refs = parse_points(text, strict=strict)
    points = [p for ref in refs for p in ref.points]
    label = refs[0].label if refs else None
    outside = _ELEMENT_RE.sub(" ", text)  # a label saying "total of 3" must not count
    m = _COUNT_RE.search(outside)
    if m:
        return CountAnswer(count=int(m.group(1)), label=label, points=points)
    if _NONE_RE.search(outside) and not refs:
        return CountAnswer(count=0, label=None, points=[])
    raise ValidationError(f"not a counting answer: {text[:80]!r}")
