"""The model-free parts of the LLM layer: the deterministic cleaner, the faithfulness check,
versioned prompts, JSON-schema helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixmo.errors import NotFoundError, ValidationError
from pixmo.llm.backend import json_prefill, strict_schema, with_schema_instruction
from pixmo.llm.cleaner import clean_transcript
from pixmo.llm.faithfulness import check_faithfulness, content_words
from pixmo.llm.outputs import CapQAOutput
from pixmo.llm.prompts import list_prompts, load_prompt

TRANSCRIPT = "um so there's a a red car parked uh next to a tree and uh two dogs"


# -- faithfulness -------------------------------------------------------------------------------


def test_faithfulness_flags_a_caption_that_adds_an_object():
    check = check_faithfulness("A red car parked next to a tree, with two dogs and a bicycle.", TRANSCRIPT)
    assert check.added == ["bicycle"]
    assert not check.faithful and "unfaithful" in check.flags
    assert check.score < check.threshold


def test_faithfulness_passes_a_faithful_caption():
    check = check_faithfulness("A red car is parked next to a tree, and there are two dogs.", TRANSCRIPT)
    assert check.passed and check.flags == []
    assert check.score == 1.0 and check.added == [] and check.dropped == []
    assert set(check.supported) == {"red", "car", "tree", "2", "dog"}


def test_faithfulness_flags_a_changed_number_and_a_dropped_object():
    wrong_count = check_faithfulness("A red car next to a tree and three dogs.", TRANSCRIPT)
    assert "3" in wrong_count.added and not wrong_count.faithful
    dropped = check_faithfulness("Two dogs.", TRANSCRIPT)
    assert dropped.faithful and not dropped.complete and "incomplete" in dropped.flags
    assert {"car", "tree", "red"} <= set(dropped.dropped)


def test_faithfulness_supports_across_several_transcripts():
    check = check_faithfulness("A red bus at a stop where three people wait.",
                               ["uh a red bus", "a bus stop with three people waiting"])
    assert check.passed, check


def test_content_words_normalise_numbers_plurals_colours():
    assert content_words("Two Boxes, 3 glasses and a grey cat's toy") == ["2", "box", "3", "glass", "gray", "cat", "toy"]


@pytest.mark.parametrize(("caption", "transcript"), [
    ("60 birds on a wire.", "sixty birds on a wire"),
    ("25 dogs in a park.", "twenty five dogs in a park"),
    ("Twenty-five dogs in a park.", "25 dogs in a park"),
    ("1 dog on a sofa.", "one dog on a sofa"),
    ("Ein grüner Wagen auf der Straße.", "äh ein grüner Wagen auf der Straße"),
])
def test_numbers_written_either_way_and_words_of_any_script_are_supported(caption, transcript):
    """Whisper writes digits where an LLM writes words (or the other way round): sixty to ninety were
    no number words, "twenty five" was 20 and 5, "1" was never said; and letters outside a-z were
    dropped, so "Straße" was "stra" and "e"."""
    check = check_faithfulness(caption, transcript)
    assert check.faithful and check.added == [], check


def test_a_pause_between_number_words_keeps_them_apart():
    assert content_words("twenty, five dogs and ninety-nine cats") == ["20", "5", "dog", "99", "cat"]
    assert not check_faithfulness("25 dogs.", "twenty, five dogs").faithful


# -- the deterministic cleaner ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spoken", "written"),
    [
        (TRANSCRIPT, "There's a red car parked next to a tree and two dogs."),
        ("there is a there is a dog on the gre- green grass you know", "There is a dog on the green grass."),
        ("a blue, sorry, a green car. so the sky is blue", "A green car. The sky is blue."),
        ("It looks like a cat. [laughs] The the cat is orange", "It looks like a cat. The cat is orange."),
        ("okay, i see uh three three birds", "I see three birds."),
        ("um uh", ""),
        # hyphenated words are words, not false starts
        ("a top-down um photo of a well-known x-ray, the th- the cup", "A top-down photo of a well-known x-ray, the cup."),
        # letters outside a-z are letters ("caf with a cr me br l e" before)
        ("um a café with a crème brûlée uh on the the table", "A café with a crème brûlée on the table."),
        ("ein grüner Wagen auf der Straße", "Ein grüner Wagen auf der Straße."),
    ],
)
def test_cleaner_removes_what_speech_adds(spoken, written):
    assert clean_transcript(spoken) == written


words = st.sampled_from(["um", "uh", "so", "like", "the", "a", "red", "car", "two", "dogs", "tree", "i", ",", ".",
                         "you", "know", "sorry", "gre-", "green", "and", "okay", "is", "there"])


@settings(max_examples=150, deadline=None)
@given(st.lists(words, max_size=30).map(" ".join))
def test_cleaner_is_idempotent_and_adds_no_content(text):
    once = clean_transcript(text)
    assert clean_transcript(once) == once
    assert set(content_words(once)) <= set(content_words(text))
    assert check_faithfulness(once, text).faithful


# -- prompts and schemas ------------------------------------------------------------------------


def test_every_task_has_a_versioned_prompt():
    prompts = list_prompts()
    assert set(prompts) == {"clean", "merge", "capqa", "ask", "revise", "point_explain"}
    p = load_prompt("clean")
    assert p.version == "clean-v1" and load_prompt("clean", "v1") == p == load_prompt("clean", "clean-v1")
    messages = p.messages(transcript="uh a cat")
    assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "Transcript: uh a cat"}
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"]  # the worked example
    with pytest.raises(ValidationError, match="needs transcript"):
        p.messages()
    with pytest.raises(NotFoundError):
        load_prompt("clean", "v9")


def test_a_prompt_file_of_your_own(tmp_path):
    path = tmp_path / "clean.v7.toml"
    path.write_text('task = "clean"\nversion = 7\nsystem = "Be brief."\nuser = "T: $transcript {json}"\n')
    p = load_prompt("clean", str(path))
    assert p.version == f"clean-v7-{p.sha256[:8]}"  # not taken for a bundled clean-v7
    assert p.messages(transcript="x")[-1]["content"] == "T: x {json}"
    # an edited copy of the bundled prompt records a version of its own (it found every output done)
    from pixmo.llm.prompts import PROMPTS_DIR

    copy = tmp_path / "my-clean.toml"
    copy.write_bytes((PROMPTS_DIR / "clean.v1.toml").read_bytes() + b"\n# edited\n")
    edited = load_prompt("clean", str(copy))
    assert edited.version.startswith("clean-v1-") and edited.version != load_prompt("clean").version


def test_schema_helpers():
    schema = strict_schema(CapQAOutput.model_json_schema())
    assert "$defs" not in str(schema) and schema["additionalProperties"] is False
    assert schema["properties"]["pairs"]["items"]["required"] == ["question", "answer"]
    assert json_prefill(schema) == '{"pairs": [{"question": "'
    msgs = with_schema_instruction([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], schema)
    assert msgs[0]["content"].startswith("S\n\nReply with only a JSON value") and len(msgs) == 2


@pytest.mark.parametrize(("reply", "text"), [
    ("Sure! Here is the cleaned caption: A red car by a tree.", "A red car by a tree."),
    ("Okay, here's your answer:\nTwo dogs.", "Two dogs."),
    ("Sure here is the revised answer for you: Two dogs.", "Two dogs."),
    ("Caption: A red car.", "A red car."),
    ('"A red car by a tree."', "A red car by a tree."),
    ("'The car's red.'", "The car's red."),
    # the reply itself, however it begins or ends
    ("Okra and two red peppers lie on a board.", "Okra and two red peppers lie on a board."),
    ("Oktoberfest is written on the banner.", "Oktoberfest is written on the banner."),
    ("Surely a dog; it has a collar.", "Surely a dog; it has a collar."),
    ("OK Corral is on the sign.", "OK Corral is on the sign."),
    ("Here is a list of the things on the desk: a mug, a pen.", "Here is a list of the things on the desk: a mug, a pen."),
    ("Here is the text on the sign: STOP.", "Here is the text on the sign: STOP."),
    ('"STOP" is written on the sign, and below it "4-WAY"', '"STOP" is written on the sign, and below it "4-WAY"'),
    ("'Open' is on the door, 'Closed' on the back", "'Open' is on the door, 'Closed' on the back"),
])
def test_what_models_put_around_a_reply_goes_and_the_reply_stays(reply, text):
    from pixmo.llm.backend import Completion
    from pixmo.llm.tasks import _plain

    assert _plain(Completion(reply), "caption") == text


@pytest.mark.parametrize("reply", [
    '{"pairs": [{"question": "Q?", "answer": "A."}]}',
    '```json\n{"pairs": [{"question": "Q?", "answer": "A."}]}\n```',
    'Here you go: {"pairs": [{"question": "Q?", "answer": "A."}]}',
    '{"pairs": [{"question": "Q?", "answer": "A."}]}\nNote: I used {} for nothing.',
])
def test_the_json_object_is_read_whatever_surrounds_it(reply):
    from pixmo.llm.backend import Completion
    from pixmo.llm.tasks import _json

    assert _json(Completion(reply)) == {"pairs": [{"question": "Q?", "answer": "A."}]}
