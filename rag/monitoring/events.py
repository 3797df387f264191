"""What the query log records: one :class:`QueryEvent` per search or answer, and how one is
made from hits, an ``Answer`` or an exception.

``Collection.search`` and ``Collection.ask`` make and record them; a server that searches
outside them (batched searches) makes its own with :func:`search_event` and records it with
:meth:`rag.monitoring.querylog.QueryLog.record`. Inside an answer (:func:`capturing`, which
``Collection.ask`` opens), :func:`note_search` hands the search's vector and stage
latencies to the answer's event, and a search inside logs no event of its own.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.config import LOG_QUERIES
from rag.errors import ConfigError

if TYPE_CHECKING:
    from rag.types import Answer, Hit

#: What a logged query keeps: see the module docstring.
POLICIES = LOG_QUERIES
DEFAULT_POLICY = "none"
#: The stage latencies an event may carry, in seconds. ``embed`` and ``search`` split a
#: search (``search`` includes fusion, re-ranking and MMR); an answer adds ``rewrite``
#: (the follow-up rewrite), ``retrieve`` (embed + search, or a server's batched search),
#: ``generate`` and ``first_token``; ``total`` is the whole call.
#: ``search``: finding candidates (the store, and BM25); ``rerank``: ordering them (fusion,
#: the re-ranker, MMR).
STAGES = (
    "embed",
    "search",
    "rerank",
    "rewrite",
    "retrieve",
    "generate",
    "first_token",
    "total",
)
OPS = ("search", "ask")


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise ConfigError(
            f"unknown query logging {policy!r}; choose from {', '.join(POLICIES)} "
            "(none: numbers only; vector: and the embedding; text: and the question)"
        )
    return policy


@dataclass(slots=True)
class QueryEvent:
    """One search or answer, as the query log records it."""

    op: str
    ts: float = field(default_factory=time.time)
    mode: str = ""
    k: int = 0
    hits: int = 0
    #: The best hit's score and ``best - worst`` over the hits returned.
    top_score: float | None = None
    spread: float | None = None
    #: The scale of the scores: "dense" (cosine; the only one drift and coverage use),
    #: "bm25", "rrf", "weighted" or "rerank".
    score_kind: str = ""
    generator: str = ""
    citations: int | None = None
    grounding: str = ""
    #: The exception's class name when the call failed, else "".
    error: str = ""
    stages: dict[str, float] = field(default_factory=dict)
    #: Kept only when the policy allows (``text``; ``vector`` and ``text``).
    query: str = ""
    vector: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown event op {self.op!r}; choose from {', '.join(OPS)}")
        unknown = set(self.stages) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stages {sorted(unknown)}; known: {', '.join(STAGES)}")


def score_kind(mode: str, *, fusion: str = "rrf", reranked: bool = False) -> str:
    """The scale of a search's scores in ``mode`` (see :attr:`QueryEvent.score_kind`)."""
    if reranked:
        return "rerank"
    return {"dense": "dense", "bm25": "bm25"}.get(mode, fusion)


def search_event(
    hits: Sequence[Hit],
    *,
    op: str = "search",
    mode: str,
    k: int,
    kind: str,
    stages: dict[str, float],
    query: str = "",
    vector: np.ndarray | None = None,
) -> QueryEvent:
    """The event of a search that returned ``hits``."""
    scores = [float(h.score) for h in hits]
    return QueryEvent(
        op=op,
        mode=mode,
        k=k,
        hits=len(hits),
        top_score=max(scores) if scores else None,
        spread=(max(scores) - min(scores)) if scores else None,
        score_kind=kind,
        stages=dict(stages),
        query=query,
        vector=vector,
    )


def stage_timings(answer: Answer) -> dict[str, float]:
    """An answer's stage latencies under the log's names (:data:`STAGES`): ``rewrite``,
    ``retrieve``, ``generate`` and ``first_token`` from ``Answer.timings``."""
    return {s: float(v) for s, v in answer.timings.items() if s in STAGES}


def answer_event(
    answer: Answer,
    *,
    mode: str,
    k: int,
    kind: str,
    stages: dict[str, float],
    vector: np.ndarray | None = None,
) -> QueryEvent:
    """The event of ``answer``: its passages' scores, its generator, citations, grounding
    and timings (``stages`` adds the ones measured around it, such as ``embed``)."""
    event = search_event(
        answer.sources,
        op="ask",
        mode=mode,
        k=k,
        kind=kind,
        stages={**stage_timings(answer), **stages},
        query=answer.query,
        vector=vector,
    )
    event.generator = answer.generator
    event.citations = len(answer.citations)
    event.grounding = answer.grounding
    return event


def error_event(
    op: str, error: BaseException, *, mode: str, k: int, stages: dict[str, float], query: str = ""
) -> QueryEvent:
    """The event of a call that raised ``error`` (its class name is what is kept)."""
    return QueryEvent(
        op=op, mode=mode, k=k, error=type(error).__name__, stages=dict(stages), query=query
    )


_CAPTURE: ContextVar[dict[str, Any] | None] = ContextVar("rag_monitoring_capture", default=None)


@contextlib.contextmanager
def capturing() -> Iterator[dict[str, Any]]:
    """While open (``Collection.ask`` opens it around its search), :func:`note_search`
    hands its vector and stage latencies to the dict yielded, and a ``Collection.search``
    inside logs no event of its own: the answer's event is the one."""
    box: dict[str, Any] = {}
    token = _CAPTURE.set(box)
    try:
        yield box
    finally:
        _CAPTURE.reset(token)


def note_search(
    *, vector: np.ndarray | None = None, stages: dict[str, float] | None = None
) -> bool:
    """Inside an answer (:func:`capturing`), attach the search's query ``vector`` and
    ``stages`` to the answer's event; ``True`` when there was an answer to attach them to
    (the caller then logs no search event of its own)."""
    box = _CAPTURE.get()
    if box is None:
        return False
    if vector is not None:
        box["vector"] = vector
    if stages:
        box.setdefault("stages", {}).update(stages)
    return True
