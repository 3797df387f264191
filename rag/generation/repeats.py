"""No answer says the same sentence twice.

Small models loop ("The answer to this question is:" three times, one fact repeated in
each paragraph). :func:`drop_repeats` sits between any generator's stream and the reader:
it leaves out each sentence (or line) whose words were already said, citations aside, and
otherwise passes the text on as it comes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

#: The end of a sentence (., ! or ? then white space) or of a line.
_END = re.compile(r"(?<=[.!?])\s+|\n+")
_CITATION = re.compile(r"\[\d+(?:\s*,\s*\d+)*\]")
_NON_WORD = re.compile(r"\W+")


def sentence_key(sentence: str) -> str:
    """What makes two sentences the same: their words, lower-cased, citations left out."""
    return _NON_WORD.sub(" ", _CITATION.sub(" ", sentence)).strip().lower()


def drop_repeats(pieces: Iterator[str]) -> Iterator[str]:
    """``pieces`` without the sentences and lines whose :func:`sentence_key` was seen before
    (a repeat goes with the white space after it). Text streams on as it comes, except while
    the sentence being written could still turn out to be a repeat (its words so far begin
    one already said): that much is held back until it is complete. Closing the result
    closes ``pieces`` (a local model stops generating)."""
    seen: set[str] = set()
    unit, shown, live = "", 0, False  # the sentence being written; how much is out; is it new

    try:
        for piece in pieces:
            unit += piece
            while (m := _END.search(unit)) is not None:
                whole, unit = unit[: m.end()], unit[m.end() :]
                key = sentence_key(whole)
                if live or not key or key not in seen:
                    yield whole[shown:]
                if key:
                    seen.add(key)
                shown, live = 0, False
            if not live:
                key = sentence_key(unit)
                live = bool(key) and not any(k.startswith(key) for k in seen)
            if live and len(unit) > shown:
                yield unit[shown:]
                shown = len(unit)
        key = sentence_key(unit)
        if unit[shown:] and (live or not key or key not in seen):
            yield unit[shown:]
    finally:
        close = getattr(pieces, "close", None)
        if close is not None:
            close()
