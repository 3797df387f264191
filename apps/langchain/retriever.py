"""A ragkit collection as a LangChain ``BaseRetriever``."""

from __future__ import annotations

from typing import Any, Literal

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from apps.langchain.metadata import decode
from rag.collection import Collection
from rag.filters import And, Filter, parse

Mode = Literal["dense", "bm25", "hybrid"]


class RagkitRetriever(BaseRetriever):
    """:meth:`rag.Collection.search` under LangChain: dense, BM25 or hybrid retrieval, with
    MMR and the collection's re-ranker, filtered by ragkit's filter language.

    ``k``, ``mode`` and ``mmr`` default to the collection's settings (``Settings.k``,
    ``Settings.mode``; MMR off). ``where`` is a standing filter; one given to ``invoke``
    narrows it (both must hold). ``invoke(query, k=..., where=..., mode=..., mmr=...)``
    overrides the others for one call; any other argument is a ``TypeError``.

    Each ``Document`` has the chunk's id, text and metadata as ragkit stored it (``source``,
    ``heading``, ``chunk_index``, ...; LangChain metadata written through
    :class:`~apps.langchain.vectorstore.RagkitVectorStore` decoded back); with
    ``score_key`` set, also the hit's score under that key (cosine similarity for dense
    retrieval, BM25 or fused score for the others).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    collection: Collection
    k: int | None = None
    where: dict[str, Any] | str | None = None
    mode: Mode | None = None
    mmr: bool = False
    score_key: str | None = None

    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        where: Filter | dict[str, Any] | str | None = None,
        mode: Mode | None = None,
        mmr: bool | None = None,
    ) -> list[Document]:
        hits = self.collection.search(
            query,
            k=k if k is not None else self.k,
            where=_both(parse(self.where), parse(where)),
            mode=mode or self.mode,
            mmr=self.mmr if mmr is None else mmr,
        )
        docs = []
        for hit in hits:
            metadata = decode(hit.chunk.metadata)
            if self.score_key is not None:
                metadata[self.score_key] = float(hit.score)
            docs.append(Document(id=hit.id, page_content=hit.chunk.text, metadata=metadata))
        return docs


def _both(a: Filter | None, b: Filter | None) -> Filter | None:
    if a is None or b is None:
        return a or b
    return And((a, b))
