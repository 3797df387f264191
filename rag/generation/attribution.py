"""Citations matched after the fact, for answers whose model cited nothing.

Small local models often ignore the instruction to cite (SmolLM2-135M cited a passage in
about one answer in ten here). Rather than leave such an answer unsourced, ragkit compares
each of its sentences with the sentences of the passages it was given and, where one is
close enough, names that passage. The answer records that its citations were matched by
ragkit, not written by the model (``Answer.attributed``), and every surface shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rag.generation.extractive import split_sentences
from rag.types import Hit

#: Cosine similarity (of normalised sentence embeddings) below which a sentence is left
#: without a citation: it is not clearly supported by any one passage.
MIN_SIMILARITY = 0.55


def attribute(
    text: str,
    sources: Sequence[Hit],
    embed: Callable[[Sequence[str]], np.ndarray],
    *,
    min_similarity: float = MIN_SIMILARITY,
) -> tuple[str, list[int]]:
    """``text`` with ``[n]`` after each sentence that a passage supports, and the cited
    numbers in order of first appearance. Sentences no passage supports stay uncited."""
    answer_sentences = split_sentences(text)
    passage_sentences: list[tuple[int, str]] = [
        (n, s) for n, hit in enumerate(sources, start=1) for s in split_sentences(hit.chunk.text)
    ]
    if not answer_sentences or not passage_sentences:
        return text, []
    vectors = np.asarray(
        embed([*answer_sentences, *(s for _, s in passage_sentences)]), dtype=np.float32
    )
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)
    answers, passages = vectors[: len(answer_sentences)], vectors[len(answer_sentences) :]
    similarity = answers @ passages.T
    owner = np.array([n for n, _ in passage_sentences])
    out: list[str] = []
    cited: list[int] = []
    rest = text
    for i, sentence in enumerate(answer_sentences):
        j = int(np.argmax(similarity[i]))
        at = rest.find(sentence)
        if at < 0:  # the splitter normalised whitespace; keep the text as it was
            continue
        end = at + len(sentence)
        if similarity[i, j] < min_similarity:
            out.append(rest[:end])
            rest = rest[end:]
            continue
        n = int(owner[j])
        # "... sentence [n]." rather than "... sentence. [n]"
        cut = end - 1 if sentence[-1] in ".!?" else end
        out.append(f"{rest[:cut]} [{n}]{rest[cut:end]}")
        rest = rest[end:]
        if n not in cited:
            cited.append(n)
    out.append(rest)
    return "".join(out), cited
