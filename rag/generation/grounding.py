"""Grounding: keep an answer to what its passages say, or say that they do not answer.

Three checks, used by :func:`rag.generation.answer` for generators that ask for them
(``grounded = True``: the extractive one, and the local one with an embedder):

* **Abstention** (:func:`answerable`): before any model is asked, the passages' sentences
  are ranked against the question (:func:`rank_sentences`). When the best sentence is
  neither close in meaning nor shares the question's key terms, the answer is
  :data:`ABSTAIN` and no model runs.
* **Support** (:func:`check_support`): every sentence of an answer must be supported by a
  passage it cites (or, when it cites none, by any passage): its embedding close to one
  of that passage's sentences, and its lexical evidence present in that passage: every
  number, every capitalised name, and most of its content words. Unsupported sentences are
  removed; repeated sentences are dropped.
* **Fallback**: when no sentence survives, the answer is the best-ranked passage sentences
  quoted verbatim (what the extractive generator says), marked ``"fell back"``.

Sentence embeddings are memoised per embedder, because the same passages are embedded for
ranking, for the local model's candidates and for the support check of one answer.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rag.generation.extractive import _WORD, _content_words, split_sentences
from rag.generation.prompt import ABSTAIN, citation_spans
from rag.types import Hit

__all__ = [
    "ABSTAIN",
    "Candidate",
    "Support",
    "answerable",
    "check_support",
    "dedupe_sentences",
    "describe",
    "extractive_text",
    "rank_sentences",
]

Embed = Callable[[Sequence[str]], np.ndarray]

#: Weight of the question's content words found in a sentence, added to its cosine.
OVERLAP_WEIGHT = 0.15
#: Abstain unless the best sentence scores at least this (cosine + weighted overlap)...
MIN_ANSWER_SCORE = 0.45
#: ...or has at least this cosine together with this share of the question's content
#: words among the passages' words (calibrated on XQuAD-en: see docs/benchmarks.md).
MIN_ANSWER_COSINE = 0.35
MIN_QUESTION_COVERAGE = 0.5
#: ...or holds at least this share of the question's content words itself (this keeps a
#: weaker embedder, such as the tests' hashing one, from abstaining on answerable questions).
MIN_QUESTION_OVERLAP = 0.5
#: An answer sentence whose best cosine to a cited passage's sentences is below this is
#: not supported.
MIN_SUPPORT_COSINE = 0.5
#: Share of an answer sentence's content words that must appear in the cited passage.
MIN_TERM_COVERAGE = 0.7

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
# A capitalised word not at the start of a sentence: a name, which must be in the passage.
_NAME = re.compile(r"(?<=[\w,;:)] )[A-Z][\w’'-]*")

_CACHE_SIZE = 4096
_VECTORS: OrderedDict[tuple[Embed, str], np.ndarray] = OrderedDict()


def embed_texts(embed: Embed, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised embeddings of ``texts`` (one batched call for those not memoised)."""
    missing = list(dict.fromkeys(t for t in texts if (embed, t) not in _VECTORS))
    if missing:
        vectors = np.asarray(embed(missing), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
        for text, vector in zip(missing, vectors, strict=True):
            _VECTORS[(embed, text)] = vector
            if len(_VECTORS) > _CACHE_SIZE:
                _VECTORS.popitem(last=False)
    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack([_VECTORS[(embed, t)] for t in texts])


@dataclass(frozen=True, slots=True)
class Candidate:
    """A passage sentence ranked against a question."""

    score: float
    cosine: float
    overlap: float
    passage: int  # 1-based: passage [n] is sources[n - 1]
    sentence: str


def _key(sentence: str) -> str:
    return " ".join(_WORD.findall(sentence.lower()))


def rank_sentences(
    question: str, sources: Sequence[Hit], embed: Embed, *, overlap_weight: float = OVERLAP_WEIGHT
) -> list[Candidate]:
    """Every distinct passage sentence of three words or more, best first: cosine to the
    question plus ``overlap_weight`` times the share of the question's content words it
    contains (the extractive generator's score). Ties keep passage and sentence order."""
    pool: list[tuple[int, str]] = []
    seen: set[str] = set()
    for n, hit in enumerate(sources, start=1):
        for sentence in split_sentences(hit.chunk.text):
            key = _key(sentence)
            if len(key.split()) < 3 or key in seen:
                continue
            seen.add(key)
            pool.append((n, sentence))
    if not pool:
        return []
    vectors = embed_texts(embed, [question, *(s for _, s in pool)])
    cosine = vectors[1:] @ vectors[0]
    words = _content_words(question)
    overlap = [len(words & _content_words(s)) / len(words) if words else 0.0 for _, s in pool]
    ranked = [
        Candidate(float(c) + overlap_weight * o, float(c), o, n, s)
        for c, o, (n, s) in zip(cosine, overlap, pool, strict=True)
    ]
    order = sorted(range(len(ranked)), key=lambda i: -ranked[i].score)
    return [ranked[i] for i in order]


def question_coverage(question: str, sources: Sequence[Hit]) -> float:
    """Share of the question's content words that appear anywhere in ``sources``."""
    words = _content_words(question)
    if not words:
        return 0.0
    present: set[str] = set()
    for hit in sources:
        present |= _content_words(hit.chunk.text)
    return len(words & present) / len(words)


def answerable(question: str, sources: Sequence[Hit], ranked: Sequence[Candidate]) -> bool:
    """Whether the passages may answer the question: the best sentence scores
    :data:`MIN_ANSWER_SCORE`, or is close enough in meaning
    (:data:`MIN_ANSWER_COSINE`) while the passages hold most of the question's key terms
    (:data:`MIN_QUESTION_COVERAGE`), or holds half the question's content words
    (:data:`MIN_QUESTION_OVERLAP`)."""
    if not ranked:
        return False
    best = ranked[0]
    if best.score >= MIN_ANSWER_SCORE or best.overlap >= MIN_QUESTION_OVERLAP:
        return True
    return (
        best.cosine >= MIN_ANSWER_COSINE
        and question_coverage(question, sources) >= MIN_QUESTION_COVERAGE
    )


def cite(sentence: str, n: int) -> str:
    """``sentence`` with ``[n]`` before its final punctuation ("... folder [1].")."""
    if len(sentence) > 1 and sentence[-1] in ".!?" and sentence[-2] not in ".!?\"')]":
        return f"{sentence[:-1]} [{n}]{sentence[-1]}"
    return f"{sentence} [{n}]"


def extractive_text(ranked: Sequence[Candidate], *, max_sentences: int = 2) -> str:
    """The best ``max_sentences`` ranked sentences, quoted and cited: the fallback answer."""
    return " ".join(cite(c.sentence, c.passage) for c in ranked[:max_sentences])


def _strip_marks(sentence: str, n_sources: int) -> tuple[str, list[int]]:
    spans = citation_spans(sentence, n_sources)
    numbers: list[int] = []
    plain = sentence
    for start, end, cited in reversed(spans):
        plain = plain[:start] + plain[end:]
        numbers = cited + [n for n in numbers if n not in cited]
    # "stated [1]." -> "stated." but ".rag" after a space stays as it is.
    plain = re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", " ".join(plain.split()))
    return plain.strip(), numbers


def dedupe_sentences(text: str) -> str:
    """``text`` without a sentence that repeats an earlier one (compared by words, citation
    marks ignored); ``text`` itself, layout kept, when nothing repeats."""
    seen: set[str] = set()
    out: list[str] = []
    repeated = False
    for sentence in split_sentences(text):
        key = _key(re.sub(r"\[[\d,\s-]+\]", "", sentence))
        if key and key in seen:
            repeated = True
            continue
        seen.add(key)
        out.append(sentence)
    return " ".join(out) if repeated else text


@dataclass(frozen=True, slots=True)
class Support:
    """The answer's supported sentences (cited), and how many were removed."""

    text: str
    citations: list[int]
    removed: int


def _lexically_supported(sentence: str, passage: str) -> bool:
    haystack = passage.lower()
    passage_numbers = set(_NUMBER.findall(passage.replace(",", "")))
    for number in _NUMBER.findall(sentence.replace(",", "")):
        if number not in passage_numbers:
            return False
    for name in _NAME.findall(sentence):
        if name.lower() not in haystack:
            return False
    words = _content_words(sentence)
    if not words:
        return False
    present = _content_words(passage)
    return len(words & present) / len(words) >= MIN_TERM_COVERAGE


def check_support(text: str, sources: Sequence[Hit], embed: Embed) -> Support:
    """``text`` with only the sentences a passage supports, each cited by the passage that
    supports it (the one it cites when that one does), repeated sentences dropped.

    A sentence is supported by passage ``n`` when its embedding's cosine to one of the
    passage's sentences reaches :data:`MIN_SUPPORT_COSINE` and the passage holds its
    numbers, its capitalised names and :data:`MIN_TERM_COVERAGE` of its content words."""
    sentences: list[tuple[str, list[int]]] = []
    seen: set[str] = set()
    for raw in split_sentences(text):
        plain, numbers = _strip_marks(raw, len(sources))
        key = _key(plain)
        if not key:
            continue
        if key in seen:
            continue
        seen.add(key)
        sentences.append((plain, numbers))
    passage_sentences = [
        [s for s in split_sentences(hit.chunk.text) if _key(s)] or [hit.chunk.text]
        for hit in sources
    ]
    flat = [s for group in passage_sentences for s in group]
    owner = np.array([n for n, group in enumerate(passage_sentences, 1) for _ in group])
    if not sentences or not flat:
        return Support("", [], len(sentences))
    vectors = embed_texts(embed, [*(s for s, _ in sentences), *flat])
    similarity = vectors[: len(sentences)] @ vectors[len(sentences) :].T
    kept: list[str] = []
    citations: list[int] = []
    removed = 0
    for i, (plain, numbers) in enumerate(sentences):
        # Try the cited passages first, then (for an uncited sentence) all of them.
        order = numbers or list(range(1, len(sources) + 1))
        supporter = None
        for n in order:
            best = float(similarity[i, owner == n].max()) if (owner == n).any() else 0.0
            if best >= MIN_SUPPORT_COSINE and _lexically_supported(
                plain, sources[n - 1].chunk.text
            ):
                supporter = n
                break
        if supporter is None:
            removed += 1
            continue
        kept.append(cite(plain, supporter))
        if supporter not in citations:
            citations.append(supporter)
    return Support(" ".join(kept), citations, removed)


def describe(grounding: str, removed: int = 0) -> str:
    """One sentence on what the grounding check did to an answer (an :class:`Answer`'s
    ``grounding`` and ``removed``), for the CLI and the UI; empty when it did not run."""
    if grounding == "grounded":
        if not removed:
            return "Grounded: every sentence is supported by the passage it cites."
        some = f"{removed} unsupported sentence{'s' if removed != 1 else ''}"
        return f"Grounded: every sentence is supported by the passage it cites ({some} removed)."
    if grounding == "fell back":
        return (
            "Fell back: no sentence of the model's answer was supported by the passages, so "
            "the answer quotes the passages' best sentences instead."
        )
    if grounding == "abstained":
        return "Abstained: the passages do not answer this question; the closest are listed."
    return ""
