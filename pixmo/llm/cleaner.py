"""The deterministic cleaner: a spoken transcript → a written caption, without a model.

It removes what speech adds and writing does not have, and nothing else, so every content word
of its output was spoken: fillers (``um``, ``uh``, ``you know``, a filler ``like``), discourse
markers that open a clause (``so``, ``okay``, ``well``), repeated words and phrases (``the the``,
``there is a there is a``), false starts (``gre- green``, ``a blue, sorry, a green car``),
bracketed noises (``[laughs]``); then fixes casing and punctuation. It is idempotent.
"""

from __future__ import annotations

import re

FILLERS = {"um", "umm", "uh", "uhh", "uhm", "erm", "er", "ah", "eh", "hmm", "hm", "mm", "mhm", "mmm"}
MULTI_FILLERS = (("you", "know"), ("i", "guess"), ("let", "me", "see"), ("let's", "see"))
# words that only open a clause in speech ("so, there's a car" / "okay so the sky is blue")
OPENERS = {"so", "okay", "ok", "well", "alright", "right", "basically", "yeah", "anyway", "and", "now"}
WEAK_OPENERS = {"and", "now", "right", "well"}
CORRECTIONS = (("sorry",), ("i", "mean"), ("no", "wait"), ("or", "rather"), ("wait",), ("no",))
# a word (letters of any script, digits) may hold apostrophes, dots and hyphens ("top-down",
# "x-ray"); only a hyphen that ends it ("gre- green") marks a false start
_TOKEN = re.compile(r"[^\W_]+(?:['’.\-][^\W_]+)*-?|[.,!?;:]")
_NOISE = re.compile(r"\[[^\]]*\]|\([^)]*\)|\*[^*]*\*")
_END = {".", "!", "?"}
_BREAK = _END | {",", ";", ":"}


def _norm(tok: str) -> str:
    return tok.lower().replace("’", "'")


def _is_word(tok: str) -> bool:
    return tok not in _BREAK


def _drop_fillers(toks: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(toks):
        low = _norm(toks[i])
        if low in FILLERS or (toks[i].endswith("-") and len(toks[i]) > 1):  # "gre-" is a false start
            i += 1
            continue
        multi = next((m for m in MULTI_FILLERS if [_norm(t) for t in toks[i : i + len(m)]] == list(m)), None)
        if multi:
            i += len(multi)
            continue
        at_start = not out or out[-1] in _BREAK
        nxt = toks[i + 1] if i + 1 < len(toks) else "."
        if low == "like" and (at_start or nxt in _BREAK or (out and out[-1] == ",")):
            i += 1
            continue
        if at_start and low in OPENERS:
            # "so the car" / "okay, the car": a clause opener; "and"/"now"/"right" only before a pause
            weak = low in WEAK_OPENERS
            if not weak or nxt in _BREAK or _norm(nxt) in OPENERS | FILLERS:
                i += 1
                continue
        out.append(toks[i])
        i += 1
    return out


def _drop_corrections(toks: list[str]) -> list[str]:
    """``a blue, sorry, a green car`` → ``a green car``: drop the phrase the speaker took back."""
    i = 0
    while i < len(toks):
        marker = next((m for m in CORRECTIONS if [_norm(t) for t in toks[i : i + len(m)]] == list(m)), None)
        prev_break = i > 0 and toks[i - 1] == ","
        if marker and prev_break:
            j = i + len(marker)
            while j < len(toks) and toks[j] == ",":
                j += 1
            if j < len(toks) and _is_word(toks[j]):
                restart = _norm(toks[j])
                # look back (at most 4 words, within the clause) for where the retracted phrase began
                k = i - 2
                while k >= 0 and k >= i - 6 and _is_word(toks[k]):
                    if _norm(toks[k]) == restart:
                        del toks[k:j]
                        i = k
                        break
                    k -= 1
                else:
                    i += 1
                continue
        i += 1
    return toks


def _drop_repeats(toks: list[str]) -> list[str]:
    """Collapse a word or phrase (up to 4 words) said twice in a row, commas between ignored."""
    changed = True
    while changed:
        changed = False
        for n in (4, 3, 2, 1):
            i = 0
            while i + n <= len(toks):
                a = toks[i : i + n]
                j = i + n
                while j < len(toks) and toks[j] == ",":
                    j += 1
                b = toks[j : j + n]
                if (len(b) == n and all(_is_word(t) for t in a + b)
                        and [_norm(t) for t in a] == [_norm(t) for t in b]):
                    del toks[i + n : j + n]
                    changed = True
                else:
                    i += 1
    return toks


def _punctuate(toks: list[str]) -> str:
    out: list[str] = []
    for tok in toks:
        if tok in _BREAK:
            if not out or out[-1] in _BREAK:
                if out and tok in _END:
                    out[-1] = tok  # ", ." → "."
                continue
            out.append(tok)
        else:
            out.append(tok)
    while out and out[-1] in _BREAK - _END:
        out.pop()
    if out and out[-1] not in _END:
        out.append(".")
    words: list[str] = []
    capital = True
    for tok in out:
        if tok in _BREAK:
            words[-1] += tok
            capital = tok in _END
            continue
        if _norm(tok).startswith("i'") or _norm(tok) == "i":
            tok = "I" + tok[1:]
        if capital:
            tok = tok[0].upper() + tok[1:]
            capital = False
        words.append(tok)
    return " ".join(words)


def clean_transcript(text: str) -> str:
    """A written caption made from ``text`` by rules alone (see the module docstring)."""
    current = text
    for _ in range(4):  # to a fixed point: one removal can expose another
        toks = _TOKEN.findall(_NOISE.sub(" ", current).replace("—", ",").replace("--", ","))
        toks = _drop_repeats(_drop_corrections(_drop_fillers(toks)))
        cleaned = _punctuate(toks)
        if cleaned == current:
            break
        current = cleaned
    return current
