"""Faithfulness of a written caption to the transcripts it was made from.

The caption's content words (nouns by a stopword-and-suffix heuristic, numbers with number words
read as digits, colours) are matched against the transcripts' content words after light
normalisation (case, plurals). ``score`` is the share of the caption's content that the
transcripts support; ``added`` is what the caption says that nobody said (a hallucination
candidate), ``dropped`` what was said and the caption lost. A caption is ``unfaithful`` when its
score is under the threshold or it adds a number, and ``incomplete`` when it keeps too little.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

FLAGS = ("unfaithful", "incomplete")  # the quality flags a failed check puts on a caption
COLOURS = frozenset(
    "red orange yellow green blue purple violet pink brown black white gray grey silver gold golden beige "
    "tan cyan magenta maroon navy teal turquoise crimson scarlet ivory cream khaki olive lime indigo "
    "lavender peach coral bronze copper charcoal".split()
)
NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        "zero _ two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen twenty".split()
    )
    if w != "_"  # "one" is mostly a pronoun ("the left one"); "a"/"one" carry no count to check
} | {"thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80",
     "ninety": "90", "hundred": "100", "thousand": "1000", "dozen": "12"}
_TENS = frozenset({"twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"})
_UNITS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9}
# function words, common verbs and adjectives, and words every caption uses about itself
STOPWORDS = frozenset(
    """
    a an the this that these those there here it its it's they them their theirs he him his she her hers we us
    our you your i me my mine one ones some any each every all both either neither no not nor none many much
    more most few less least several other another such own same so than too very just only also even still
    again ever never always often sometimes perhaps maybe probably quite rather really almost about above
    across after against along among around at before behind below beneath beside besides between beyond by
    down during except for from in inside into near next of off on onto out outside over past since through
    throughout to toward towards under underneath until up upon with within without via and or but if then
    because while as whether though although yet where when what which who whom whose why how whatever
    is are was were be been being am do does did done doing have has had having can could will would shall
    should may might must let lets let's there's that's what's it's here's who's isn't aren't wasn't weren't
    don't doesn't didn't can't couldn't won't wouldn't shouldn't i'm i've you're we're they're he's she's
    see seen saw sees seeing look looks looked looking appear appears appeared appearing seem seems seemed
    show shows showed shown showing depict depicts depicted depicting feature features featured featuring
    contain contains contained containing include includes included including display displays displayed
    sit sits sat sitting stand stands stood standing lie lies lying lay hold holds held holding wear wears
    wearing worn place placed put make makes made get gets got go goes going went come comes came take
    takes took give gives gave say says said know knows think thinks guess mean means like likes want
    image images picture pictures photo photos photograph photographs shot scene view visible shown
    background foreground top bottom left right center centre middle side sides front back corner edge
    part parts area areas kind sort type lot lots bit thing things something anything everything nothing
    way ways well okay ok um uh yeah yes like just actually basically literally really
    big small large little tall short long wide narrow high low old new young good bad nice great
    clear clearly bright dark light slightly mostly partially fully overall general
    first second third last next another
    """.split()
)
_NOUN_ENDINGS_KEPT = ("building", "ceiling", "painting", "clothing", "railing", "railings", "buildings",
                      "paintings", "ring", "rings", "string", "strings", "wing", "wings", "king", "thing",
                      "bed", "shed", "sled", "sledding", "red")
# letters of any script ("café", "Straße"); digits on their own
_WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\d+(?:[.,]\d+)?")


def _words(text: str) -> list[str]:
    """Lower-cased words and numbers of ``text``; a tens word and a unit ("twenty five",
    "twenty-five") are one number, as the digits "25" are."""
    lowered = text.lower().replace("’", "'")
    found = list(_WORD.finditer(lowered))
    raw = [m.group() for m in found]
    out: list[str] = []
    i = 0
    while i < len(raw):
        joined = i + 1 < len(raw) and lowered[found[i].end() : found[i + 1].start()] in (" ", "-")
        if joined and raw[i] in _TENS and raw[i + 1] in _UNITS:
            out.append(str(int(NUMBER_WORDS[raw[i]]) + _UNITS[raw[i + 1]]))
            i += 2
            continue
        out.append(raw[i])
        i += 1
    return out


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("sses", "shes", "ches", "xes", "zes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")) or len(word) <= 3:
        return word
    return word[:-1] if word.endswith("s") else word


def content_words(text: str) -> list[str]:
    """The normalised content words of ``text`` in order (duplicates kept)."""
    out: list[str] = []
    for raw in _words(text):
        word = raw[:-2] if raw.endswith("'s") else raw
        if word[0].isdigit():
            out.append(word.replace(",", ""))
        elif word in NUMBER_WORDS:
            out.append(NUMBER_WORDS[word])
        elif word in COLOURS:
            out.append("gray" if word == "grey" else word)
        elif word in STOPWORDS or len(word) < 3:
            continue
        elif word.endswith("ly") or (word.endswith(("ing", "ed")) and word not in _NOUN_ENDINGS_KEPT):
            continue  # adverbs, participles: not what the check is about
        else:
            out.append(_stem(word))
    return out


def _support(text: str) -> set[str]:
    """Every form of every word of ``text`` that a caption may use for it: content words, plus
    the stems of verbs (``waiting`` supports ``wait``, ``parked`` supports ``park``)."""
    out = set(content_words(text))
    words = _words(text)
    if {"one", "a", "an"} & set(words):
        out.add("1")  # "one car" / "a car" says what "1 car" does
    for raw in words:
        word = raw[:-2] if raw.endswith("'s") else raw
        out.add(_stem(word))
        for suffix in ("ing", "ed"):
            if word.endswith(suffix) and len(word) > len(suffix) + 2:
                root = word[: -len(suffix)]
                out.update({root, root + "e", _stem(root)})
                if len(root) > 2 and root[-1] == root[-2]:
                    out.add(root[:-1])  # sitting -> sit
    return out


@dataclass
class Faithfulness:
    """How well a caption's content is supported by its transcripts (see the module docstring)."""

    score: float
    coverage: float
    supported: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    threshold: float = 0.9
    min_coverage: float = 0.85

    @property
    def faithful(self) -> bool:
        return self.score >= self.threshold and not any(w[0].isdigit() for w in self.added)

    @property
    def complete(self) -> bool:
        return self.coverage >= self.min_coverage

    @property
    def passed(self) -> bool:
        return self.faithful and self.complete

    @property
    def flags(self) -> list[str]:
        return [name for name, bad in zip(FLAGS, (not self.faithful, not self.complete)) if bad]

    def as_dict(self) -> dict:
        return {**asdict(self), "faithful": self.faithful, "complete": self.complete}


def check_faithfulness(caption: str, transcripts: list[str] | str, *, threshold: float = 0.9,
                       min_coverage: float = 0.85) -> Faithfulness:
    """Measure ``caption`` against ``transcripts`` (one or several)."""
    sources = [transcripts] if isinstance(transcripts, str) else list(transcripts)
    said: set[str] = set()
    support: set[str] = set()
    for text in sources:
        said.update(content_words(text))
        support |= _support(text)
    written = list(dict.fromkeys(content_words(caption)))
    supported = [w for w in written if w in support]
    added = [w for w in written if w not in support]
    kept = set(written)
    dropped = sorted(w for w in said if w not in kept)
    score = len(supported) / len(written) if written else 1.0  # nothing said, nothing added
    coverage = (len(said) - len(dropped)) / len(said) if said else 1.0
    return Faithfulness(round(score, 4), round(coverage, 4), supported, added, dropped, threshold, min_coverage)


# The rewrite stage stores the share of supported statements as "score" (and the supported words
# as "supported"); hand-made rows may carry the share as "supported". The first number wins.
SCORE_KEYS = ("score", "supported")


def stored_score(faithfulness: object) -> float | None:
    """The supported share (0..1) from a caption's stored ``faithfulness`` dict, or None."""
    if not isinstance(faithfulness, dict):
        return None
    for key in SCORE_KEYS:
        value = faithfulness.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None
