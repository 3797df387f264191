"""Grounding: support check, lexical evidence, fallback, abstention (rag.generation.grounding)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from rag.generation import ABSTAIN, answer
from rag.generation.grounding import check_support
from rag.types import Chunk, Hit

_VOCAB = ["faiss", "store", "default", "vector", "paris", "capital", "france", "1889", "tower"]


def embed(texts: Sequence[str]) -> np.ndarray:
    """A bag-of-words embedder over a tiny vocabulary (plus a constant bias)."""
    rows = []
    for text in texts:
        words = text.lower().replace(".", " ").replace("?", " ").split()
        rows.append([1.0 if w in words else 0.0 for w in _VOCAB] + [0.1])
    return np.asarray(rows, dtype=np.float32)


def hit(text: str, i: int = 0) -> Hit:
    return Hit(
        id=str(i), score=1.0, chunk=Chunk(id=str(i), text=text, metadata={"source": f"doc{i}.md"})
    )


SOURCES = [
    hit("FAISS is the default vector store. The Eiffel Tower was finished in 1889.", 0),
]


class Scripted:
    name = "scripted"
    model = "scripted"
    grounded = True

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def stream(self, question: str, sources: Sequence[Hit], *, history=()) -> Iterator[str]:
        self.calls += 1
        yield self.text


def test_unsupported_sentence_removed() -> None:
    gen = Scripted("FAISS is the default vector store [1]. Paris is the capital of France [1].")
    result = answer(gen, "What is the default vector store?", SOURCES, embed=embed)
    assert result.grounding == "grounded"
    assert result.removed == 1
    assert "FAISS" in result.text and "Paris" not in result.text
    assert result.citations == [1]


def test_number_not_in_passage_rejected() -> None:
    support = check_support("The Eiffel Tower was finished in 1887 [1].", SOURCES, embed)
    assert support.removed == 1 and support.text == ""
    support = check_support("The Eiffel Tower was finished in 1889 [1].", SOURCES, embed)
    assert support.removed == 0 and "1889" in support.text


def test_falls_back_to_extractive_when_nothing_supported() -> None:
    gen = Scripted("Paris is the capital of France.")
    result = answer(gen, "What is the default vector store?", SOURCES, embed=embed)
    assert result.grounding == "fell back"
    assert result.removed == 1
    assert "FAISS is the default vector store" in result.text
    assert result.citations == [1]


def test_abstains_below_threshold_without_calling_the_generator() -> None:
    gen = Scripted("Paris is the capital of France.")
    result = answer(gen, "Who painted the Mona Lisa?", SOURCES, embed=embed)
    assert result.text == ABSTAIN
    assert result.grounding == "abstained"
    assert result.citations == []
    assert gen.calls == 0


def test_extractive_generator_is_grounded() -> None:
    from rag.generation.extractive import ExtractiveGenerator

    result = answer(
        ExtractiveGenerator(embed), "What is the default vector store?", SOURCES, embed=embed
    )
    assert result.grounding == "grounded"
    assert "FAISS" in result.text
    result = answer(ExtractiveGenerator(embed), "Who painted the Mona Lisa?", SOURCES, embed=embed)
    assert result.grounding == "abstained" and result.text == ABSTAIN


def test_ungrounded_generator_unchecked() -> None:
    gen = Scripted("Paris is the capital of France.")
    gen.grounded = False
    result = answer(gen, "What is the default vector store?", SOURCES, embed=embed)
    assert result.grounding == "" and "Paris" in result.text
