"""Point conversions and Molmo point text: golden strings and round-trip properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixmo.errors import ValidationError
from pixmo.formats import (
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
)

fast = settings(deadline=None, max_examples=100)

unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_infinity=False)
norm_point = st.tuples(unit, unit)
norm_points = st.lists(norm_point, min_size=1, max_size=12)
labels = st.text(max_size=30)
outside_unit = st.one_of(
    st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1.0 + 1e-9, allow_nan=False, allow_infinity=False),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)
TOL = 0.05 + 1e-9  # one decimal on the 0-100 scale


def display_key(p: tuple[float, float]) -> tuple[float, float]:
    return (float(f"{p[0] * 100:.1f}"), float(f"{p[1] * 100:.1f}"))


def assert_close_100(got: list[Point], expected: list[tuple[float, float]]) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert abs(g.x * 100 - e[0] * 100) <= TOL, (g, e)
        assert abs(g.y * 100 - e[1] * 100) <= TOL, (g, e)


# ----------------------------------------------------------------------------- golden strings


def test_single_point_golden() -> None:
    assert render_points([(0.123, 0.456)], "label") == '<point x="12.3" y="45.6" alt="label">label</point>'


def test_several_points_golden_sorted_by_x_then_y() -> None:
    text = render_points([(0.3, 0.4), (0.1, 0.9), (0.1, 0.2)], "mug")
    assert text == '<points x1="10.0" y1="20.0" x2="10.0" y2="90.0" x3="30.0" y3="40.0" alt="mug">mug</points>'


def test_count_golden() -> None:
    text = render_count([(0.3, 0.4), (0.1, 0.2)], "cats")
    assert text == (
        'Counting the <points x1="10.0" y1="20.0" x2="30.0" y2="40.0" alt="cats">cats</points>'
        " shows a total of 2."
    )
    one = render_count([(0.5, 0.25)], "dog")
    assert one == 'Counting the <point x="50.0" y="25.0" alt="dog">dog</point> shows a total of 1.'


def test_none_golden() -> None:
    assert render_none() == NONE_TEXT == "There are none."
    assert render_count([], "cats") == "There are none."
    assert render_points([], "cats") == "There are none."


def test_edges_render_without_negative_zero() -> None:
    assert render_points([(-0.0, 1.0)], "a") == '<point x="0.0" y="100.0" alt="a">a</point>'


def test_alt_differs_from_label() -> None:
    text = render_points([(0.5, 0.5)], "the red car", alt="car")
    assert text == '<point x="50.0" y="50.0" alt="car">the red car</point>'
    assert parse_points(text) == [PointRef("the red car", "car", [Point(0.5, 0.5)])]


def test_label_escaping_golden() -> None:
    text = render_points([(0.5, 0.5)], 'a "b" & <c>')
    assert text == (
        '<point x="50.0" y="50.0" alt="a &quot;b&quot; &amp; &lt;c&gt;">a &quot;b&quot; &amp; &lt;c&gt;</point>'
    )
    assert parse_points(text)[0].label == 'a "b" & <c>'
    assert parse_points(text)[0].alt == 'a "b" & <c>'


# ----------------------------------------------------------------------------- parsing


def test_parse_every_element_in_free_text() -> None:
    text = (
        'The <point x="61.5" y="40.6" alt="boat">boat</point> is left of the '
        '<points x1="10" y1="20.5" x2="30.0" y2="40.0" alt="buoys">two buoys</points>, '
        "and a self-closing <point x='1.0' y='2.0' alt='gull'/> too."
    )
    refs = parse_points(text)
    assert [r.label for r in refs] == ["boat", "two buoys", "gull"]
    assert [r.alt for r in refs] == ["boat", "buoys", "gull"]
    assert refs[0].points == [Point(0.615, 0.406)]
    assert_close_100(refs[1].points, [(0.10, 0.205), (0.30, 0.40)])
    assert refs[2].points == [Point(0.01, 0.02)]
    assert parse_points("no points here <pointer> <b>") == []


def test_parse_orders_indexed_coordinates_numerically() -> None:
    attrs = " ".join(f'x{i}="{i}.0" y{i}="{i}.5"' for i in range(1, 12))
    refs = parse_points(f'<points {attrs} alt="n">n</points>')
    assert [round(p.x * 100, 6) for p in refs[0].points] == [float(i) for i in range(1, 12)]


@pytest.mark.parametrize(
    "bad",
    [
        '<point x="101" y="5" alt="a">a</point>',
        '<point x="-1" y="5" alt="a">a</point>',
        '<point x="nan" y="5" alt="a">a</point>',
        '<point x="abc" y="5" alt="a">a</point>',
        '<point x="5" alt="a">a</point>',
        '<points x1="5" y1="5" x2="6" alt="a">a</points>',
        '<point alt="a">a</point>',
    ],
)
def test_parse_refuses_malformed_or_out_of_range(bad: str) -> None:
    with pytest.raises(ValidationError):
        parse_points(bad)
    good = '<point x="5" y="5" alt="b">b</point>'
    assert [r.label for r in parse_points(bad + good, strict=False)] == ["b"]


def test_parse_count_forms() -> None:
    assert parse_count("There are none.") == CountAnswer(0, None, [])
    answer = parse_count(render_count([(0.3, 0.4), (0.1, 0.2)], "cats"))
    assert answer.count == 2 and answer.label == "cats"
    assert_close_100(answer.points, [(0.1, 0.2), (0.3, 0.4)])
    # a label that itself says "total of" does not fool the count
    tricky = render_count([(0.5, 0.5)], "a total of 7 apples")
    assert parse_count(tricky).count == 1
    with pytest.raises(ValidationError):
        parse_count("I see some cats.")


# ----------------------------------------------------------------------------- properties


@fast
@given(norm_points, labels)
def test_render_parse_round_trip(points: list[tuple[float, float]], label: str) -> None:
    refs = parse_points(render_points(points, label))
    assert len(refs) == 1
    ref = refs[0]
    assert ref.label == label and ref.alt == label
    assert_close_100(ref.points, sorted(points, key=display_key))


@fast
@given(norm_points, labels)
def test_rendered_points_are_sorted_by_x_then_y(points: list[tuple[float, float]], label: str) -> None:
    parsed = parse_points(render_points(points, label))[0].points
    keys = [(round(p.x * 100, 1), round(p.y * 100, 1)) for p in parsed]
    assert keys == sorted(keys)
    assert [display_key(p) for p in sort_points(points)] == sorted(display_key(p) for p in points)


@fast
@given(st.lists(norm_point, max_size=12), labels)
def test_count_round_trip(points: list[tuple[float, float]], label: str) -> None:
    answer = parse_count(render_count(points, label))
    assert answer.count == len(points)
    assert_close_100(answer.points, sorted(points, key=display_key))
    assert answer.label == (label if points else None)


@fast
@given(labels, st.text(max_size=10), st.text(max_size=10))
def test_labels_with_markup_survive_in_context(label: str, before: str, after: str) -> None:
    label = f'"{label}" & <b>it\'s</b> &amp; &#65;'
    before = before.replace("<", "")  # free text around the element must not open another one
    text = f"{before}{render_points([(0.25, 0.75)], label)}{after.replace('<', '')}"
    [ref] = parse_points(text)
    assert ref.label == label and ref.alt == label
    assert ref.points == [Point(0.25, 0.75)]


@fast
@given(st.text(max_size=40))
def test_escape_unescape_round_trip(text: str) -> None:
    escaped = escape_label(text)
    assert not set('<>"') & set(escaped)
    assert unescape_label(escaped) == text


@fast
@given(norm_points)
def test_pixmo100_round_trip(points: list[tuple[float, float]]) -> None:
    scaled = to_pixmo100(points)
    assert all(0.0 <= p.x <= 100.0 and 0.0 <= p.y <= 100.0 for p in scaled)
    back = from_pixmo100(scaled)
    for b, p in zip(back, points):
        assert math.isclose(b.x, p[0], abs_tol=1e-12) and math.isclose(b.y, p[1], abs_tol=1e-12)


@fast
@given(norm_points, st.integers(1, 20_000), st.integers(1, 20_000))
def test_pixel_round_trip(points: list[tuple[float, float]], width: int, height: int) -> None:
    pixels = to_pixels(points, width, height)
    assert all(0.0 <= p.x <= width and 0.0 <= p.y <= height for p in pixels)
    back = from_pixels(pixels, width, height)
    for b, p in zip(back, points):
        assert math.isclose(b.x, p[0], abs_tol=1e-9) and math.isclose(b.y, p[1], abs_tol=1e-9)
    again = to_pixels(back, width, height)
    for a, q in zip(again, pixels):
        assert math.isclose(a.x, q.x, abs_tol=1e-6) and math.isclose(a.y, q.y, abs_tol=1e-6)


def test_pixel_origin_is_top_left() -> None:
    assert to_pixels([(0.0, 0.0), (1.0, 1.0), (0.5, 0.25)], 640, 480) == [
        Point(0.0, 0.0),
        Point(640.0, 480.0),
        Point(320.0, 120.0),
    ]
    assert from_pixels([(320, 120)], 640, 480) == [Point(0.5, 0.25)]


@fast
@given(outside_unit, unit, st.booleans())
def test_out_of_range_normalised_refused(bad: float, good: float, bad_is_x: bool) -> None:
    point = (bad, good) if bad_is_x else (good, bad)
    for call in (
        lambda: to_pixmo100([point]),
        lambda: to_pixels([point], 100, 100),
        lambda: render_points([point], "x"),
        lambda: render_count([point], "x"),
        lambda: sort_points([point]),
    ):
        with pytest.raises(ValidationError):
            call()


@fast
@given(st.floats(min_value=100.0 + 1e-6, allow_infinity=False), st.integers(1, 5000))
def test_out_of_range_scales_refused(over: float, size: int) -> None:
    with pytest.raises(ValidationError):
        from_pixmo100([(over, 50.0)])
    with pytest.raises(ValidationError):
        from_pixmo100([(50.0, -over)])
    with pytest.raises(ValidationError):
        from_pixels([(size + 0.5, 0.0)], size, size)
    with pytest.raises(ValidationError):
        from_pixels([(0.0, -0.5)], size, size)


@pytest.mark.parametrize("size", [(0, 10), (10, 0), (-5, 10), (math.nan, 10), (math.inf, 10)])
def test_bad_image_size_refused(size: tuple[float, float]) -> None:
    with pytest.raises(ValidationError):
        to_pixels([(0.5, 0.5)], *size)
    with pytest.raises(ValidationError):
        from_pixels([(0.5, 0.5)], *size)


@pytest.mark.parametrize("bad", [[(0.5,)], [(0.1, 0.2, 0.3)], [("a", 0.2)], [None], [(True, 0.5)]])
def test_malformed_points_refused(bad: list) -> None:
    with pytest.raises(ValidationError):
        to_pixmo100(bad)
