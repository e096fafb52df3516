"""The rewrite tasks: a versioned prompt, an output schema and a check, run in batches.

One function per task (`clean`, `merge`, `capqa`, `ask`, `revise`, `point_explain`) for one
input; `run_task` runs any task over many inputs in one batch (the pipeline stage uses it). A
reply that does not satisfy the task's schema is sent back to the model with the validation
error, up to ``retries`` times, then the result is ``failed`` with its reason. ``clean`` and
``merge`` captions are checked for faithfulness to the transcripts; a ``clean`` caption that fails
the check is replaced by the deterministic cleaner's (``produced_by="rule"``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from pixmo.errors import ValidationError
from pixmo.llm.backend import Completion, LLMBackend, strict_schema
from pixmo.llm.cleaner import clean_transcript
from pixmo.llm.errors import LLMError, OutputInvalid, RequestRefused
from pixmo.llm.faithfulness import check_faithfulness
from pixmo.llm.outputs import AnswerOutput, CapQAOutput, CaptionOutput, PointExplainOutput
from pixmo.llm.prompts import load_prompt

TASKS = ("clean", "merge", "capqa", "ask", "revise", "point_explain")


@dataclass
class TaskResult:
    """The outcome of one task on one input, with its lineage.

    ``text`` is the caption or answer (for ``capqa`` the pairs as JSON); ``output`` the validated
    schema object. ``status`` is ``ok`` or ``failed`` (then ``error`` says why, ``reason`` the
    category). ``raw`` is the model's last reply; ``faithfulness`` and ``flags`` come from the
    caption check.
    """

    task: str
    status: str
    text: str
    output: BaseModel | None
    model_id: str
    prompt_version: str
    produced_by: str = "llm"
    error: str | None = None
    reason: str | None = None
    attempts: int = 1
    raw: str = ""
    completion_tokens: int = 0
    faithfulness: dict[str, Any] | None = None
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, Any]:
        """Everything about the result, JSON-ready."""
        out = {k: v for k, v in self.__dict__.items() if k != "output"}
        out["output"] = self.output.model_dump() if self.output is not None else None
        return out


# -- turning inputs into prompt fields --------------------------------------------------------


def _none(text: str | None) -> str:
    return text.strip() if text and text.strip() else "(none)"


def normalise_labelled_points(labelled_points: Sequence[Any]) -> list[tuple[str, list[tuple[float, float]]]]:
    """``[{"label": .., "points": [[x, y], ...]}]`` or ``[(label, points)]`` (normalised [0, 1]
    coordinates, points as pairs or ``{"x", "y"}``) → ``[(label, [(x, y), ...])]``."""
    from pixmo.formats.points import validate_points

    out = []
    for item in labelled_points:
        label, points = (item["label"], item.get("points", [])) if isinstance(item, dict) else item
        pts = [(p["x"], p["y"]) if isinstance(p, dict) else tuple(p) for p in points]
        out.append((str(label), [tuple(p) for p in validate_points(pts)]))
    if not out:
        raise ValidationError("point_explain needs at least one labelled point set")
    return out


def _render_points(labelled: list[tuple[str, list]]) -> str:
    lines = []
    for i, (label, pts) in enumerate(labelled, start=1):
        count = f"{len(pts)} point{'s' if len(pts) != 1 else ''}" if pts else "not present"
        lines.append(f"[{i}] {label} ({count})")
    return "\n".join(lines)


def _fields(task: str, x: dict[str, Any]) -> dict[str, Any]:
    if task == "clean":
        return {"transcript": x["transcript"].strip()}
    if task == "merge":
        return {"transcripts": "\n".join(f"Transcript {i}: {t.strip()}" for i, t in enumerate(x["transcripts"], 1))}
    if task == "capqa":
        return {"caption": x["caption"].strip(), "n": int(x.get("n", 3))}
    if task in ("ask", "revise"):
        out = {"question": x["question"].strip(), "caption": x["caption"].strip(), "ocr_text": _none(x.get("ocr_text"))}
        if task == "revise":
            out |= {"previous_answer": x["previous_answer"].strip(), "feedback": x["feedback"].strip()}
        return out
    if task == "point_explain":
        return {"question": x["question"].strip(), "points": _render_points(x["labelled_points"])}
    raise ValidationError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")


# -- turning replies into outputs -------------------------------------------------------------

# what small models put before the text asked for ("Sure! Here is the cleaned caption:"): a filler
# word only with its punctuation (or before "here"), and "here is …:" only when it names the text
# ("Okra, …" lost its "Ok", "Here is a list of the things on the desk: a mug" its list)
_PREAMBLE = re.compile(
    r"^\s*(?:(?:sure|okay|ok|certainly)(?:[,!.]+\s*|\s+(?=here\b)))?"
    r"(?:here(?:'s| is) (?:the |a |an |your |my )?(?:[\w-]+\s+){0,3}?"
    r"(?:caption|answer|response|description|version|rewrite|output)\b[^:\n]{0,30}:\s*)?"
    r"(?:(?:cleaned |written |merged |final |revised )?(?:caption|answer|response)\s*:\s*)?",
    re.IGNORECASE,
)
_INNER_APOSTROPHE = re.compile(r"(?<=\w)'(?=\w)")


def _unquoted(text: str) -> str:
    """``text`` without quotes around the whole of it, not without those of a quote at each end
    ("STOP" is written on the sign, and below it "4-WAY")."""
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "\"'":
        return text
    inner = text[1:-1]
    rest = _INNER_APOSTROPHE.sub("", inner) if text[0] == "'" else inner  # "car's" is no quote
    return text if text[0] in rest else inner.strip()


def _plain(c: Completion, what: str) -> str:
    text = _unquoted(_PREAMBLE.sub("", c.text.strip(), count=1).strip())
    if c.finish_reason == "length":
        # cut off at max_tokens: keep the complete sentences, if there are any
        ends = [m.end() for m in re.finditer(r"[.!?](?=\s|$)", text)]
        if ends:
            text = text[: ends[-1]]
    if not text:
        raise OutputInvalid("empty", f"the reply has no {what}")
    return text


def _json(c: Completion) -> Any:
    text = c.text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        text = fence.group(1).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        start = text.find("{")
        if start >= 0:
            try:  # the object, whatever follows it (a note that has braces of its own)
                return json.JSONDecoder().raw_decode(text, start)[0]
            except json.JSONDecodeError:
                pass
        hint = " (the reply was cut off at max_tokens)" if c.finish_reason == "length" else ""
        raise OutputInvalid("invalid_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}{hint}") from None


def _validated(model: type[BaseModel], data: Any) -> BaseModel:
    try:
        return model.model_validate(data)
    except PydanticValidationError as exc:
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'reply'}: {e['msg']}" for e in exc.errors()[:5])
        raise OutputInvalid("schema", detail) from None


def _parse_caption(c: Completion, x: dict) -> BaseModel:
    return _validated(CaptionOutput, {"caption": _plain(c, "caption")})


def _parse_capqa(c: Completion, x: dict) -> BaseModel:
    out = _validated(CapQAOutput, _json(c))
    out.pairs = out.pairs[: int(x.get("n", 3))]
    return out


def _parse_answer(c: Completion, x: dict) -> BaseModel:
    return _validated(AnswerOutput, {"answer": _plain(c, "answer")})


_CITE = re.compile(r"\s?\[(\d+)\]")


def _parse_point_explain(c: Completion, x: dict) -> BaseModel:
    from pixmo.formats.points import render_points, to_pixmo100

    answer = _plain(c, "answer")
    labelled = x["labelled_points"]
    cited = [int(m.group(1)) for m in _CITE.finditer(answer)]
    if not cited:
        raise OutputInvalid("citation", "the answer cites no marked point; cite them like [1]")
    bad = sorted({n for n in cited if not 1 <= n <= len(labelled)})
    if bad:
        raise OutputInvalid("citation", f"the answer cites [{bad[0]}] but only [1] to [{len(labelled)}] are marked")

    def element(m: re.Match) -> str:
        label, pts = labelled[int(m.group(1)) - 1]
        return " " + render_points(pts, label)

    return _validated(PointExplainOutput, {
        "answer": answer,
        "response": _CITE.sub(element, answer),
        "parsed_response": _CITE.sub(" <|POINT|>", answer),
        "alt_text": [labelled[n - 1][0] for n in cited],
        "inline_text": [labelled[n - 1][0] for n in cited],
        "points": [[[round(p.x, 1), round(p.y, 1)] for p in to_pixmo100(labelled[n - 1][1])] for n in cited],
    })


@dataclass(frozen=True)
class TaskSpec:
    """How one task reads its reply: the output schema, whether the reply is JSON, the parser,
    and the main text of an output."""

    name: str
    output: type[BaseModel]
    json: bool
    parse: Callable[[Completion, dict], BaseModel]
    text: Callable[[BaseModel], str]
    what: str

    def json_schema(self) -> dict | None:
        return strict_schema(self.output.model_json_schema()) if self.json else None


SPECS: dict[str, TaskSpec] = {
    "clean": TaskSpec("clean", CaptionOutput, False, _parse_caption, lambda o: o.caption, "the caption"),
    "merge": TaskSpec("merge", CaptionOutput, False, _parse_caption, lambda o: o.caption, "the caption"),
    "capqa": TaskSpec("capqa", CapQAOutput, True, _parse_capqa,
                      lambda o: json.dumps(o.model_dump()["pairs"], ensure_ascii=False), "the JSON"),
    "ask": TaskSpec("ask", AnswerOutput, False, _parse_answer, lambda o: o.answer, "the answer"),
    "revise": TaskSpec("revise", AnswerOutput, False, _parse_answer, lambda o: o.answer, "the answer"),
    "point_explain": TaskSpec("point_explain", PointExplainOutput, False, _parse_point_explain,
                              lambda o: o.answer, "the answer"),
}


# -- running -----------------------------------------------------------------------------------


def run_task(
    backend: LLMBackend,
    task: str,
    inputs: Sequence[dict[str, Any]],
    *,
    prompt_version: str | int | None = None,
    max_tokens: int | None = None,
    temperature: float = 0.0,
    retries: int = 2,
    threshold: float = 0.9,
    min_coverage: float = 0.85,
    fallback: bool = True,
) -> list[TaskResult]:
    """Run ``task`` on every input in one batch; invalid replies are retried with the error.

    Inputs are dicts of the task's fields (see the per-task functions). ``fallback``: a ``clean``
    caption that fails the faithfulness check is replaced by the rule cleaner's.
    """
    if task not in SPECS:
        raise ValidationError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
    spec = SPECS[task]
    prompt = load_prompt(task, prompt_version)
    inputs = [dict(x) for x in inputs]
    if task == "point_explain":
        for x in inputs:
            x["labelled_points"] = normalise_labelled_points(x["labelled_points"])
    conversations = [prompt.messages(**_fields(task, x)) for x in inputs]
    schema = spec.json_schema()
    limit = max_tokens or prompt.max_tokens
    results: list[TaskResult | None] = [None] * len(inputs)
    tokens = [0] * len(inputs)
    pending = list(range(len(inputs)))
    for attempt in range(1, retries + 2):
        if not pending:
            break
        options = dict(max_tokens=limit, temperature=temperature, json_schema=schema)
        # some request of the batch may be at fault: it fails, the others go on
        replies = complete_or_refuse(backend, [conversations[i] for i in pending], options)
        again = []
        for i, reply in zip(pending, replies):
            if isinstance(reply, RequestRefused):
                results[i] = TaskResult(task=task, status="failed", text="", output=None, model_id=backend.model_id,
                                        prompt_version=prompt.version, error=str(reply), reason="request_refused",
                                        attempts=attempt, completion_tokens=tokens[i])
                continue
            tokens[i] += reply.completion_tokens
            base = dict(task=task, model_id=backend.model_id, prompt_version=prompt.version, attempts=attempt,
                        raw=reply.text, completion_tokens=tokens[i])
            try:
                out = spec.parse(reply, inputs[i])
            except OutputInvalid as exc:
                if attempt <= retries:
                    conversations[i] = conversations[i] + [
                        {"role": "assistant", "content": reply.text},
                        {"role": "user", "content": f"That reply is invalid: {exc.detail}. Reply again with {spec.what} only."},
                    ]
                    again.append(i)
                else:
                    results[i] = TaskResult(status="failed", text="", output=None, error=str(exc), reason=exc.reason, **base)
                continue
            results[i] = TaskResult(status="ok", text=spec.text(out), output=out, **base)
        pending = again
    done = [r for r in results if r is not None]
    if task in ("clean", "merge"):
        for x, r in zip(inputs, done):
            sources = [x["transcript"]] if task == "clean" else list(x["transcripts"])
            _check(r, sources, threshold=threshold, min_coverage=min_coverage, fallback=fallback and task == "clean")
    return done


def complete_or_refuse(backend: LLMBackend, conversations: list, options: dict[str, Any]) -> list[Completion | RequestRefused]:
    """One reply per conversation, in order, with a `RequestRefused` in place of each refused request
    (the batch at once; one by one when the backend cannot tell which request was refused)."""
    try:
        replies = backend.complete_batch(conversations, **options)
    except RequestRefused as exc:
        replies = exc.replies or _complete_each(backend, conversations, options)
    if len(replies) != len(conversations):  # pairing them up would give items each other's replies
        raise LLMError(f"{backend.model_id}: {len(replies)} replies to {len(conversations)} requests")
    return replies


def _complete_each(backend: LLMBackend, conversations: list, options: dict[str, Any]) -> list[Completion | RequestRefused]:
    """Each conversation on its own: its reply, or the refusal of its request."""
    out: list[Completion | RequestRefused] = []
    for conversation in conversations:
        try:
            out.append(backend.complete_batch([conversation], **options)[0])
        except RequestRefused as exc:
            out.append(exc)
    return out


def _check(r: TaskResult, sources: list[str], *, threshold: float, min_coverage: float, fallback: bool) -> None:
    """Measure faithfulness; on failure either use the rule cleaner's caption or flag."""
    check = check_faithfulness(r.text, sources, threshold=threshold, min_coverage=min_coverage) if r.ok else None
    if check is not None and check.passed:
        r.faithfulness, r.flags = check.as_dict(), []
        return
    if not fallback:
        if check is not None:
            r.faithfulness, r.flags = check.as_dict(), check.flags
        return
    rule = clean_transcript(" ".join(sources))
    rule_check = check_faithfulness(rule, sources, threshold=threshold, min_coverage=min_coverage)
    why = ",".join(check.flags) if check is not None else (r.reason or "failed")
    r.faithfulness = rule_check.as_dict() | {
        "llm_text": r.text or r.raw,
        "llm_check": check.as_dict() if check is not None else None,
        "llm_error": r.error,
        "fallback_reason": why,
    }
    r.flags = rule_check.flags
    r.status, r.error, r.reason = ("ok", None, None) if rule else ("failed", "empty: nothing left after cleaning", "empty")
    r.text, r.produced_by = rule, "rule"
    r.output = CaptionOutput(caption=rule) if rule else None


# -- one function per task -------------------------------------------------------------------


def clean(backend: LLMBackend, transcript: str, **options: Any) -> TaskResult:
    """One spoken transcript → a written caption (faithfulness-checked, rule fallback)."""
    return run_task(backend, "clean", [{"transcript": transcript}], **options)[0]


def merge(backend: LLMBackend, transcripts: Sequence[str], **options: Any) -> TaskResult:
    """Several transcripts of one image → one caption (faithfulness-checked; flagged, not replaced)."""
    if not transcripts:
        raise ValidationError("merge needs at least one transcript")
    return run_task(backend, "merge", [{"transcripts": list(transcripts)}], **options)[0]


def capqa(backend: LLMBackend, caption: str, *, n: int = 3, **options: Any) -> TaskResult:
    """A caption → up to ``n`` question/answer pairs (``result.output.pairs``)."""
    return run_task(backend, "capqa", [{"caption": caption, "n": n}], **options)[0]


def ask(backend: LLMBackend, question: str, caption: str, ocr_text: str = "", **options: Any) -> TaskResult:
    """Answer a question about an image from its caption and OCR text only."""
    return run_task(backend, "ask", [{"question": question, "caption": caption, "ocr_text": ocr_text}], **options)[0]


def revise(backend: LLMBackend, question: str, caption: str, ocr_text: str, previous_answer: str, feedback: str,
           **options: Any) -> TaskResult:
    """Rewrite an answer following the annotator's feedback on what is wrong with it."""
    x = {"question": question, "caption": caption, "ocr_text": ocr_text, "previous_answer": previous_answer,
         "feedback": feedback}
    return run_task(backend, "revise", [x], **options)[0]


def point_explain(backend: LLMBackend, question: str, labelled_points: Sequence[Any], **options: Any) -> TaskResult:
    """Answer a question citing the marked points (``[n]`` in ``text``; PixMo columns in ``output``)."""
    return run_task(backend, "point_explain", [{"question": question, "labelled_points": labelled_points}],
                    **options)[0]


def run_text(backend: LLMBackend, task: str, texts: Sequence[str], *, question: str | None = None,
             ocr_text: str | None = None, previous_answer: str | None = None, feedback: str | None = None,
             labelled_points: Sequence[Any] | None = None, n: int = 3, **options: Any) -> TaskResult:
    """Run ``task`` on command-line style arguments (what ``pixmo rewrite text`` does)."""
    options = {k: v for k, v in options.items() if v is not None}

    def need(value: Any, what: str) -> Any:
        if not value:
            raise ValidationError(f"{task} needs {what}")
        return value

    if task == "clean":
        return clean(backend, " ".join(need(texts, "a transcript")), **options)
    if task == "merge":
        return merge(backend, need(texts, "transcripts"), **options)
    caption = " ".join(texts)
    if task == "capqa":
        return capqa(backend, need(caption, "a caption"), n=n, **options)
    if task == "ask":
        return ask(backend, need(question, "--question"), need(caption, "a caption"), ocr_text or "", **options)
    if task == "revise":
        return revise(backend, need(question, "--question"), need(caption, "a caption"), ocr_text or "",
                      need(previous_answer, "--previous"), need(feedback, "--feedback"), **options)
    if task == "point_explain":
        return point_explain(backend, need(question, "--question"), need(labelled_points, "--points"), **options)
    raise ValidationError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
