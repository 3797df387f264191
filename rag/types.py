"""Plain data types shared by connectors, stores, retrieval and generation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias

#: Metadata values are scalars, so that every backend can store and filter them alike
#: (the whole rule is in :mod:`rag.contract`).
MetadataValue: TypeAlias = str | int | float | bool
Metadata: TypeAlias = dict[str, MetadataValue]


@dataclass(frozen=True, slots=True)
class Document:
    """A unit of text read by a connector: a file, or one page of a PDF.

    ``source`` identifies where it came from (for files, the absolute path); ``metadata``
    carries what every chunk cut from it inherits (title, page, mtime, content hash, ...).
    """

    source: str
    text: str
    metadata: Metadata = field(default_factory=dict)
    #: Markup of the text, which chooses the splitter: "text" or "markdown".
    format: str = "text"


@dataclass(frozen=True, slots=True)
class Failure:
    """A source that could not be read, with the reason in words a user can act on."""

    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A source that was read or seen and holds nothing to index (an empty file, a file
    type no parser reads): listed for the user, not an error."""

    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of a document small enough to embed in one pass of the model."""

    id: str
    text: str
    metadata: Metadata = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.metadata.get("source", ""))


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result. ``score`` is always "higher is better" (cosine similarity for the
    dense stores, BM25 score or fused score for the other retrieval modes)."""

    id: str
    score: float
    chunk: Chunk

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.chunk.text,
            "score": round(float(self.score), 6),
            "source": self.chunk.source,
            "metadata": dict(self.chunk.metadata),
        }


@dataclass(slots=True)
class Answer:
    """A generated answer with the passages it was given.

    ``sources`` are the passages the generator was given, in the order they were numbered
    in the prompt (passage ``[n]`` is ``sources[n - 1]``): the retrieved ones that fit its
    context. ``left_out`` counts the retrieved passages that did not fit and were not
    given. ``citations`` lists the numbers the answer actually cites, in order of first
    appearance.
    """

    text: str
    sources: list[Hit]
    model: str
    generator: str
    citations: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    #: True when the model cited nothing and ragkit matched the answer's sentences to the
    #: passages instead (see :mod:`rag.generation.attribution`).
    attributed: bool = False
    #: What was searched for: the question, or its standalone rewrite in a conversation.
    query: str = ""
    #: Retrieved passages left out of the prompt (they did not fit the model's context).
    left_out: int = 0
    #: How the answer relates to its passages: "grounded" (every sentence supported),
    #: "fell back" (the model's answer was replaced by an extractive one), "abstained"
    #: (the passages do not answer the question), or "" (not checked).
    grounding: str = ""
    #: Sentences of the model's answer removed because no passage supports them.
    removed: int = 0
    #: The route a router chose (the generator's name in the routes file), and why.
    route: str = ""
    route_reason: str = ""

    @property
    def cited(self) -> list[Hit]:
        return [self.sources[n - 1] for n in self.citations if 0 < n <= len(self.sources)]

    def to_json(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "sources": [hit.to_json() for hit in self.sources],
            "left_out": self.left_out,
            "citations": list(self.citations),
            "citations_by": "ragkit" if self.attributed else self.generator,
            "query": self.query,
            "grounding": self.grounding,
            "removed": self.removed,
            "route": self.route,
            "route_reason": self.route_reason,
            "model": self.model,
            "generator": self.generator,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
