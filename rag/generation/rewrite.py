"""Follow-up questions made standalone before retrieval, whatever the generator.

In a conversation, "and how do I change it?" means nothing to a retriever on its own: it
has to be searched for together with what "it" refers to. :func:`standalone` decides
whether a question is a follow-up (a pronoun such as *it* or *that*, a leading *and* or
*what about*, or too few words of its own) and, only then, rewrites it:

1. with the generator's LLM (``rewrite_question``) where it has one, keeping the result
   only when it passes a sanity check (:func:`plausible_rewrite`): a small model often
   answers instead, copies the last answer, or drops the subject;
2. otherwise deterministically: the follow-up with the previous user question's words
   added (itself made standalone first, for a chain of follow-ups), leaving out function
   words: "and how do I change it? default chunk size". On the sample corpus this merge
   retrieved as well as joining the two questions whole in the top 5, and put the gold
   source first more often (``python -m eval.multiturn``; docs/benchmarks.md, "Follow-up
   questions").

A standalone question, or any question without history, is returned unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Protocol

__all__ = ["is_follow_up", "join_rewrite", "merge_rewrite", "plausible_rewrite", "standalone"]

logger = logging.getLogger("rag")

History = Sequence[tuple[str, str]]


class _Rewriter(Protocol):
    def rewrite_question(self, question: str, history: History) -> str: ...


_WORD = re.compile(r"[a-z0-9][a-z0-9_'’.+-]*[a-z0-9]|[a-z0-9]")
# Words that point back at something said before.
_ANAPHORA = frozenset(
    "it its it's itself that this these those they them their theirs there one ones he him "
    "his she her such same former latter above".split()
)
# Openings that continue the previous question.
_CONTINUATIONS = (
    "and",
    "what about",
    "how about",
    "also",
    "but",
    "or",
    "so",
    "then",
    "what else",
    "anything else",
    "same for",
    "else",
)
# Words that carry no topic of their own: function words and question words ...
_FUNCTION_WORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being "
    "do does did doing done what which who whom whose when where why how i you we me my your "
    "our us can could should would will may might must shall not no yes so than then about "
    "into over under any some all each also too very just more most much many else again "
    "there here it its it's this that these those they them their one ones he she his her "
    "such same".split()
)
# ... and the generic verbs and nouns of a how-to question.
_STOPWORDS = _FUNCTION_WORDS | frozenset(
    "get gets got set use used using make made work works change changed happen happens "
    "happened mean means need needs thing things way ways something anything instead tell "
    "know want like ok okay please".split()
)
# Replies that are not a rewritten question: refusals and talk about the task itself.
_META = re.compile(
    r"\b(?:i'?m sorry|i am sorry|sorry|i cannot|i can't|i can not|as an ai|language model|"
    r"standalone|stand-alone|rewrit\w*|follow-?up|conversation|rephras\w*|"
    r"the question|the user|the assistant)\b",
    re.IGNORECASE,
)
_EXISTENTIAL = re.compile(r"\b(?:is|are|was|were|isn't|aren't)\s+there\b")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _content(text: str) -> list[str]:
    return [w for w in _words(text) if w not in _STOPWORDS]


def _meaningful(text: str) -> set[str]:
    return {w for w in _words(text) if w not in _FUNCTION_WORDS}


def is_follow_up(question: str) -> bool:
    """Whether ``question`` reads as a follow-up: it starts by continuing ("and ...",
    "what about ..."), points back with a pronoun ("it", "that", "them", "there", "one"),
    or has fewer than two topic words of its own ("Why?", "Which version?")."""
    text = question.strip().lower()
    text = re.sub(r"^[^a-z0-9]+", "", text)
    if any(re.match(rf"{re.escape(c)}\b", text) for c in _CONTINUATIONS):
        return True
    words = set(_words(_EXISTENTIAL.sub(" ", text)))
    if words & _ANAPHORA:
        return True
    return len(_content(text)) < 2


def join_rewrite(question: str, previous: str) -> str:
    """The previous question and the follow-up, joined: ``"What is the default chunk
    size? and how do I change it?"``."""
    prev = previous.strip()
    if prev and prev[-1] not in "?.!":
        prev += "?"
    return f"{prev} {question.strip()}".strip()


def merge_rewrite(question: str, previous: str) -> str:
    """The follow-up with the previous question's words added, function words left out:
    ``"and how do I change it? default chunk size"`` (measured against
    :func:`join_rewrite` by eval.multiturn)."""
    own = set(_words(question))
    extra: list[str] = []
    for w in _words(previous):
        if w in _FUNCTION_WORDS:
            continue
        if w not in own and w not in extra:
            extra.append(w)
    return f"{question.strip()} {' '.join(extra)}".strip()


def plausible_rewrite(rewrite: str, question: str, history: History) -> bool:
    """Whether an LLM's ``rewrite`` of the follow-up ``question`` can be trusted for
    retrieval: non-empty and not too long, not the question unchanged (no rewrite
    happened), not a copy of the last answer, no refusal or talk about the task, and
    sharing topic words with the follow-up (where it has any) and with the previous turn
    (what the follow-up refers to)."""
    text = rewrite.strip()
    if not history or len(text) < 3:
        return False
    prev_q, prev_a = history[-1]
    if len(text) > max(200, 2 * (len(question) + len(prev_q))):
        return False
    if _norm(text) == _norm(question):
        return False
    if _META.search(text):
        return False
    words = set(_content(text))
    if not words:
        return False
    answer_words = set(_content(prev_a))
    # A copy of the answer: most of its words are the answer's and few are the questions'.
    asked = set(_content(question)) | set(_content(prev_q))
    if _norm(text) in _norm(prev_a) or (
        answer_words and len(words & answer_words - asked) > len(words) / 2
    ):
        return False
    # It keeps what the follow-up asks ("change", "configure"): at least half its words.
    own = _meaningful(question)
    if own and len(_meaningful(text) & own) * 2 < len(own):
        return False
    if not words & set(_content(prev_q)):
        return False
    # Mostly invented words: a rewrite draws its topic from the conversation.
    known = own | set(_content(prev_q)) | answer_words
    return len(words - known) <= max(1, len(words) // 2)


def _norm(text: str) -> str:
    return " ".join(_words(text))


def standalone(
    question: str,
    history: History,
    generator: _Rewriter | None = None,
    *,
    fallback: str = "merge",
) -> tuple[str, str]:
    """``(query, how)``: what to search for when ``question`` is asked after ``history``
    ((user question, answer) pairs, oldest first), and how it was made.

    ``how`` is ``"standalone"`` (no history, or not a follow-up: ``question`` itself),
    ``"llm"`` (the generator's rewrite, which passed :func:`plausible_rewrite`) or
    ``fallback`` (``"merge"``: :func:`merge_rewrite`; ``"join"``: :func:`join_rewrite`)
    with the previous question, itself made standalone first.
    """
    if fallback not in ("join", "merge"):
        raise ValueError(f"fallback must be 'join' or 'merge', not {fallback!r}")
    turns = list(history)
    if not turns or not question.strip() or not is_follow_up(question):
        return question, "standalone"
    if generator is not None:
        try:
            rewrite = generator.rewrite_question(question, turns)
        except Exception as e:  # a failed rewrite must not fail the answer
            logger.warning("question rewrite failed (%s); using the previous question", e)
            rewrite = ""
        if plausible_rewrite(rewrite, question, turns):
            return rewrite.strip(), "llm"
        if rewrite.strip() and _norm(rewrite) != _norm(question):
            logger.info("rejected the rewrite %r of %r", rewrite, question)
    # The previous question, made standalone deterministically (a chain of follow-ups).
    previous, _ = standalone(turns[-1][0], turns[:-1], None, fallback=fallback)
    rewrite_fn = join_rewrite if fallback == "join" else merge_rewrite
    return rewrite_fn(question, previous), fallback
