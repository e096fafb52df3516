"""Output schemas of the rewrite tasks: what a model reply must become to be stored."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CaptionOutput(_Out):
    """``clean`` and ``merge``: one written caption."""

    caption: str = Field(min_length=1)


class QA(_Out):
    question: str = Field(min_length=3)
    answer: str = Field(min_length=1)


class CapQAOutput(_Out):
    """``capqa``: question/answer pairs that the caption answers."""

    pairs: list[QA] = Field(min_length=1)


class AnswerOutput(_Out):
    """``ask`` and ``revise``: an answer."""

    answer: str = Field(min_length=1)


class PointExplainOutput(_Out):
    """``point_explain``: an answer citing marked points, in PixMo-Point-Explanations' columns.

    ``answer`` is the model's text with ``[n]`` citations; ``response`` has Molmo point text in
    their place, ``parsed_response`` a ``<|POINT|>`` placeholder; ``alt_text``, ``inline_text`` and
    ``points`` (0-100 scale) have one entry per citation.
    """

    answer: str = Field(min_length=1)
    response: str
    parsed_response: str
    alt_text: list[str]
    inline_text: list[str]
    points: list[list[list[float]]]
