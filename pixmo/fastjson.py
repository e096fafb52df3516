"""JSON parsing through orjson where it gives exactly what Python's ``json`` module gives.

orjson parses 2-3 x faster, but refuses what strict JSON lacks and ``json`` reads (``NaN``,
``Infinity``, a lone surrogate), and turns an integer beyond 64 bits into a float without a word.
Texts with a run of 19 or more digits (every such integer has one) and texts orjson refuses are
parsed by ``json``, so the result is always what ``json.loads`` returns.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_DIGITS = re.compile("[0-9]{19}")
_LONG_DIGITS_BYTES = re.compile(b"[0-9]{19}")


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``, faster."""
    long_digits = _LONG_DIGITS if isinstance(text, str) else _LONG_DIGITS_BYTES
    if long_digits.search(text):
        return json.loads(text)
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
