"""An optional cross-encoder re-ranker, for users who have such a model.

A cross-encoder reads the query and each candidate passage together and scores their
relevance; it is slower than the bi-encoder that retrieved the candidates but usually
ranks them better. ragkit ships none (none can be downloaded here): give the path or name
of a sentence-transformers ``CrossEncoder`` model you have (``--rerank MODEL`` or
``RAG_RERANK_MODEL``), e.g. a local copy of cross-encoder/ms-marco-MiniLM-L-6-v2.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from rag.errors import EmbeddingError
from rag.types import Hit


class PairScorer(Protocol):
    """What the re-ranker needs of a model: relevance scores for (query, passage) pairs."""

    def predict(self, pairs: Sequence[tuple[str, str]]) -> Any: ...


class Reranker:
    """Re-orders hits by a cross-encoder's score (higher is more relevant)."""

    def __init__(self, model: str | PairScorer, *, batch_size: int = 32) -> None:
        if isinstance(model, str):
            self.name = model
            self._model = _load(model)
        else:
            self.name = type(model).__name__
            self._model = model
        self.batch_size = batch_size

    def rerank(self, query: str, hits: Sequence[Hit], *, k: int) -> list[Hit]:
        if not hits:
            return []
        scores = np.asarray(
            self._model.predict([(query, h.chunk.text) for h in hits]), dtype=np.float64
        )
        scores = scores.reshape(len(hits), -1)[:, -1]  # one logit, or the "relevant" class
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(hits[i].id, float(scores[i]), hits[i].chunk) for i in order]


_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _load(name: str) -> Any:
    with _LOCK:
        if name not in _MODELS:
            from sentence_transformers import CrossEncoder

            local = Path(name).expanduser()
            try:
                _MODELS[name] = CrossEncoder(str(local) if local.exists() else name, device="cpu")
            except Exception as e:
                raise EmbeddingError(
                    f"could not load the cross-encoder {name!r}: {e}. ragkit downloads nothing at "
                    "run time: give a local cross-encoder folder with --rerank (or RAG_RERANK_MODEL)"
                ) from e
        return _MODELS[name]
