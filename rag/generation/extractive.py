"""An answer without an LLM: the passages' sentences closest to the question, cited.

Useful where no model can run (or as a fast, fully deterministic baseline): it never
invents anything, but it also cannot rephrase, combine or refuse in its own words.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from rag.errors import ConfigError
from rag.generation.context import GeneratorContext, unused
from rag.generation.prompt import ABSTAIN, NO_SOURCES
from rag.types import Hit

History = Sequence[tuple[str, str]]
Embed = Callable[[Sequence[str]], np.ndarray]

#: What the generator says when no sentence is close enough to the question.
NO_ANSWER = ABSTAIN

# Words whose trailing period does not end a sentence (compared lower-cased, without the
# final period). Single letters (initials, "p.") are handled separately.
_ABBREVIATIONS = frozenset(
    "e.g i.e etc vs cf al approx ca fig figs eq eqs no nos vol pp p ch sec dept est "
    "mr mrs ms dr prof sr jr st inc ltd co corp jan feb mar apr jun jul aug sep sept oct "
    "nov dec min max resp viz incl u.s u.k a.m p.m".split()
)
# A run of sentence-final punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s)")
# Paragraph breaks, and line breaks before a list item or a markdown heading.
_BLOCK_BREAK = re.compile(r"\n\s*\n|\n(?=[ \t]*(?:[-*•+]|\d{1,3}[.)]|#{1,6})\s)")
_WORD = re.compile(r"[a-z0-9]+(?:['’.][a-z0-9]+)*")
_STOPWORDS = frozenset(
    "a an the and or but if of to in on at by for with from as is are was were be been being "
    "do does did what which who whom whose when where why how this that these those it its "
    "i you he she we they me my your our their there here can could should would will may "
    "might must shall not no yes so than then about into over under any some all each".split()
)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text``, split at ``.``/``!``/``?`` followed by whitespace, except
    after common abbreviations ("e.g.", "Dr.") and initials, and before a lower-case word;
    decimals ("3.5") and dotted names ("config.toml") never split. Paragraphs and list items
    are always separate; markdown heading lines are dropped. Whitespace inside a sentence is
    collapsed."""
    sentences: list[str] = []
    blocks: list[str] = []
    for block in _BLOCK_BREAK.split(text):
        if block.lstrip().startswith("#"):
            # A markdown heading labels the text below it but states nothing: drop it.
            block = block.lstrip().partition("\n")[2]
        blocks.append(block)
    for block in blocks:
        block = " ".join(block.split())
        start = 0
        for match in _BOUNDARY.finditer(block):
            end = match.end()
            rest = block[end:].lstrip()
            if rest and rest[0].islower():
                continue
            words = block[start : match.start() + 1].split()
            last = words[-1].lower().rstrip(".").lstrip("(\"'“‘") if words else ""
            if block[match.start()] == "." and (
                last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())
            ):
                continue
            sentence = block[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = end
        tail = block[start:].strip()
        if tail:
            sentences.append(tail)
    return sentences


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS and len(w) > 1}


def _cite(sentence: str, n: int) -> str:
    # "... folder [1]." reads better than "... folder. [1]" when the sentence ends plainly.
    if len(sentence) > 1 and sentence[-1] in ".!?" and sentence[-2] not in ".!?\"')]":
        return f"{sentence[:-1]} [{n}]{sentence[-1]}"
    return f"{sentence} [{n}]"


class ExtractiveGenerator:
    """Answers with the passages' sentences most similar to the question, no LLM.

    Each sentence is scored by the cosine similarity of its embedding to the question's
    (``embed``: one batched call, L2-normalised rows) plus ``overlap_weight`` times the
    share of the question's content words it contains. The best ``max_sentences`` that
    score at least ``min_score`` (and within ``relative_margin`` of the best) are quoted,
    best first, each with its passage number. Deterministic.
    """

    name = "extractive"
    model = "extractive"
    #: :func:`rag.generation.answer` checks its answers (abstention, support, repeats).
    grounded = True

    def __init__(
        self,
        embed: Embed,
        *,
        max_sentences: int = 3,
        min_score: float = 0.3,
        relative_margin: float = 0.25,
        overlap_weight: float = 0.15,
    ) -> None:
        self.embed = embed
        self.max_sentences = max_sentences
        self.min_score = min_score
        self.relative_margin = relative_margin
        self.overlap_weight = overlap_weight

    def select(self, question: str, sources: Sequence[Hit]) -> list[tuple[float, int, str]]:
        """The chosen ``(score, passage number, sentence)`` triples, best first."""
        candidates: list[tuple[int, str]] = []
        seen: set[str] = set()
        for n, hit in enumerate(sources, start=1):
            for sentence in split_sentences(hit.chunk.text):
                key = " ".join(_WORD.findall(sentence.lower()))
                # Overlapping chunks repeat sentences; keep the higher-ranked copy. Skip
                # fragments of one or two words (labels, numbering): they answer nothing.
                if len(key.split()) < 3 or key in seen:
                    continue
                seen.add(key)
                candidates.append((n, sentence))
        if not candidates:
            return []
        vectors = np.asarray(self.embed([question, *(s for _, s in candidates)]), dtype=np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.where(norms > 0, norms, 1.0)
        cosine = vectors[1:] @ vectors[0]
        question_words = _content_words(question)
        overlap = np.array(
            [
                len(question_words & _content_words(s)) / len(question_words)
                if question_words
                else 0.0
                for _, s in candidates
            ],
            dtype=np.float32,
        )
        scores = cosine + self.overlap_weight * overlap
        # Stable sort: ties keep passage rank, then sentence order.
        order = np.argsort(-scores, kind="stable")
        best = float(scores[order[0]])
        chosen: list[tuple[float, int, str]] = []
        for i in order[: self.max_sentences]:
            score = float(scores[i])
            if score < self.min_score or score < best - self.relative_margin:
                break
            chosen.append((score, candidates[i][0], candidates[i][1]))
        return chosen

    def stream(
        self, question: str, sources: Sequence[Hit], *, history: History = ()
    ) -> Iterator[str]:
        if not sources:
            yield NO_SOURCES
            return
        chosen = self.select(question, sources)
        if not chosen:
            yield NO_ANSWER
            return
        for i, (_, n, sentence) in enumerate(chosen):
            yield ("" if i == 0 else " ") + _cite(sentence, n)

    def rewrite_question(self, question: str, history: History) -> str:
        return question


def create(ctx: GeneratorContext) -> ExtractiveGenerator:
    """No model: quotes the passages' sentences closest to the question.

    The ``extractive`` generator plugin; it needs the collection's embedder."""
    if ctx.embed is None:
        raise ConfigError("the extractive generator needs the collection's embedder (embed=...)")
    unused(
        ctx,
        "extractive",
        llm_model="--llm-model / RAG_LLM_MODEL",
        local_model="--local-model / RAG_LOCAL_MODEL",
        max_tokens="--max-tokens",
    )
    return ExtractiveGenerator(ctx.embed)
