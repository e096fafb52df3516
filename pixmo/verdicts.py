"""Which rows may be trained on, by their newest review verdict (no heavy imports: the loader uses it)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

UNUSABLE_VERDICTS = frozenset({"rejected", "flagged"})
"""A row whose newest verdict is one of these is left out of captions, parquet rows and targets."""


def is_usable(verdicts: dict[tuple[str, int], str], target_type: str, target_id: int) -> bool:
    """Whether a row may be trained on, given ``(target_type, target_id) -> newest verdict``."""
    return verdicts.get((target_type, target_id)) not in UNUSABLE_VERDICTS


def usable_transcripts(transcripts: Iterable[dict[str, Any]], verdicts: dict[tuple[str, int], str]) -> list[dict[str, Any]]:
    """Transcripts (dicts with ``id`` and ``recording_id``) whose own and recording's verdicts allow them."""
    return [t for t in transcripts
            if is_usable(verdicts, "transcript", t["id"]) and is_usable(verdicts, "recording", t["recording_id"])]


def newest_per_recording(transcripts: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One transcript per recording, the newest (highest id), in id order: a recording transcribed
    again by another model is one piece of speech, as the merge stage takes it."""
    newest: dict[int, dict[str, Any]] = {}
    for t in sorted(transcripts, key=lambda t: t["id"]):
        newest[t["recording_id"]] = t
    return sorted(newest.values(), key=lambda t: t["id"])


def unusable_captions(
    captions: Iterable[dict[str, Any]], transcripts: Iterable[dict[str, Any]], verdicts: dict[tuple[str, int], str]
) -> set[int]:
    """Ids of the captions not to train on: rejected or flagged, or written from a transcript whose
    own or recording's verdict is (what the export and the CapQA stage leave out)."""
    bad_sources = {
        t["id"] for t in transcripts
        if not (is_usable(verdicts, "transcript", t["id"]) and is_usable(verdicts, "recording", t["recording_id"]))
    }
    return {
        c["id"] for c in captions
        if not is_usable(verdicts, "caption", c["id"]) or {int(i) for i in c["source_transcript_ids"] or []} & bad_sources
    }


def usable_qa(
    qa: Iterable[dict[str, Any]], verdicts: dict[tuple[str, int], str], bad_captions: Iterable[int] = ()
) -> list[dict[str, Any]]:
    """Accepted QA pairs not rejected or flagged, and no CapQA pair written from a caption that was,
    or that is in ``bad_captions`` (`unusable_captions`). An ask answer's caption only grounded the
    model: the annotator accepted the answer itself."""
    bad = set(bad_captions)
    return [
        q for q in qa
        if q["status"] == "accepted" and is_usable(verdicts, "qa_pair", q["id"])
        and not (q["source"] == "capqa" and q.get("caption_id") is not None
                 and (q["caption_id"] in bad or not is_usable(verdicts, "caption", q["caption_id"])))
    ]


def record_verdicts(reviews: Iterable[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """``(target_type, target_id) -> verdict`` of an export record's reviews (in time order: the last wins)."""
    return {(r["target_type"], r["target_id"]): r["verdict"] for r in reviews}
