"""A ragkit collection as a LlamaIndex retriever."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from rag.collection import Collection
from rag.config import RETRIEVAL_MODES
from rag.errors import ConfigError
from rag.filters import Filter, parse


class RagkitRetriever(BaseRetriever):
    """:meth:`rag.Collection.search` under LlamaIndex, returning ``NodeWithScore``s.

    ``k``, ``mode`` (dense, bm25, hybrid) and ``mmr`` default to the collection's settings;
    ``where`` is ragkit's filter language. Each node is a ``TextNode`` with the chunk's id,
    text and metadata as ragkit stored it (``source``, ``heading``, ...), scored as ragkit
    scored it (cosine similarity for dense retrieval, BM25 or fused score otherwise). Put it
    under any LlamaIndex query engine: ``RetrieverQueryEngine.from_args(retriever, llm=...)``.
    """

    def __init__(
        self,
        collection: Collection,
        *,
        k: int | None = None,
        where: Filter | dict[str, Any] | str | None = None,
        mode: str | None = None,
        mmr: bool = False,
        callback_manager: CallbackManager | None = None,
    ) -> None:
        if mode is not None and mode not in RETRIEVAL_MODES:
            raise ConfigError(
                f"unknown retrieval mode {mode!r}; choose from {', '.join(RETRIEVAL_MODES)}"
            )
        super().__init__(callback_manager=callback_manager)
        self.collection = collection
        self.k = k
        self.where = parse(where)
        self.mode = mode
        self.mmr = mmr

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = self.collection.search(
            query_bundle.query_str, k=self.k, where=self.where, mode=self.mode, mmr=self.mmr
        )
        return [
            NodeWithScore(
                node=TextNode(id_=h.id, text=h.chunk.text, metadata=dict(h.chunk.metadata)),
                score=float(h.score),
            )
            for h in hits
        ]
