"""pixmo.fastjson.loads gives exactly what json.loads gives, for every text json.dumps writes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixmo import fastjson

values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(values, st.booleans())
def test_loads_is_json_loads(value, as_bytes):
    text = json.dumps(value)
    if as_bytes:
        try:
            text = text.encode("utf-8")
        except UnicodeEncodeError:
            return  # a lone surrogate has no UTF-8 form
    # repr tells NaN from NaN-less values, ints from floats and -0.0 from 0.0
    assert repr(fastjson.loads(text)) == repr(json.loads(text))


@pytest.mark.parametrize("text", ["18446744073709551616", "[-9223372036854775809]", '{"a": NaN, "b": -Infinity}',
                                  '"\\ud800"', "1e400", "[0.1, 1e-07, -0.0]"])
def test_what_orjson_would_read_differently_or_refuse(text):
    assert repr(fastjson.loads(text)) == repr(json.loads(text))
    with pytest.raises(ValueError):
        fastjson.loads("[1,")


@pytest.mark.parametrize(("text", "expected"), [("1" * 18, False), ("1" * 19, True), ("x0123456789012345678y", True),
                                                ("12345678901234567.8", False), ("\ud800" + "9" * 19, True)])
def test_long_digit_runs_are_found(text, expected):
    assert fastjson.has_long_digit_run(text) is expected
    assert fastjson.has_long_digit_run(text.encode("utf-8", "surrogatepass")) is expected
