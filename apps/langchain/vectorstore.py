"""Any ragkit store as a LangChain ``VectorStore``.

Ids are LangChain's document ids, kept as ragkit chunk ids (any non-empty string; a UUID is
made for a document without one). Metadata goes through :mod:`apps.langchain.metadata`, so
lists, nested objects, ``None`` and keys of any shape come back unchanged on every store.
``filter`` is ragkit's filter language (:mod:`rag.filters`): a mapping, its JSON text or a
tree, the same on FAISS, Chroma, Qdrant and pgvector; an operator a store cannot express
is a :class:`~rag.errors.FilterError`, and an argument this class does not take is a
``TypeError``, never ignored. Scores are cosine similarities (higher is better); relevance
scores map them onto 0-1 as ``(1 + cos) / 2``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from apps.langchain.embeddings import RagkitEmbeddings
from apps.langchain.metadata import decode, encode
from rag.errors import ContractError
from rag.filters import Filter
from rag.retrieval import mmr_rerank
from rag.store import StoreConfig, batched, open_store
from rag.types import Chunk, Hit

if TYPE_CHECKING:
    from rag.collection import Collection
    from rag.store import VectorStore as RagStore

FilterArg = Filter | Mapping[str, Any] | str | None
#: Texts embedded and written per store call when the caller does not say.
BATCH_SIZE = 64


class RagkitVectorStore(VectorStore):
    """A ragkit store (one collection of any store plugin) under LangChain.

    Build it over a collection, whose store and embedder it uses
    (:meth:`from_collection`), or over a store opened by name with any LangChain
    ``Embeddings`` (:meth:`open`, :meth:`from_texts`, :meth:`from_documents`). Writes go
    straight to the store: they are not recorded by ragkit's incremental ingestion, so the
    BM25 index of a collection and ``rag ingest``'s cleanup do not know about them (they
    leave them alone). A collection ingested by ``rag ingest`` and one filled through
    LangChain are best kept apart.
    """

    def __init__(self, store: RagStore, embedding: Embeddings, *, owns_store: bool = False):
        self.store = store
        self.embedding = embedding
        #: Whether :meth:`close` closes the store (it does when this object opened it).
        self.owns_store = owns_store

    # --- construction --------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        embedding: Embeddings,
        *,
        store: str = "faiss",
        collection: str = "langchain",
        data_dir: str | Path = ".rag",
        url: str | None = None,
        options: Mapping[str, str | int | float | bool] | None = None,
        create: bool = True,
    ) -> RagkitVectorStore:
        """Collection ``collection`` of the store plugin ``store``, in the same place under
        ``data_dir`` as ragkit keeps that store's collections (``url``: a server instead;
        ``options``: the store's own, as ``--store-opt``). Its dimension is the embedding's."""
        dim = len(embedding.embed_query("dimension"))
        config = StoreConfig(
            data_dir=Path(data_dir).expanduser() / "stores" / store,
            url=url,
            options=dict(options or {}),
        )
        opened = open_store(store, collection, dim=dim, config=config, create=create)
        return cls(opened, embedding, owns_store=True)

    @classmethod
    def from_collection(cls, collection: Collection) -> RagkitVectorStore:
        """The store of a ragkit collection, with the collection's embedder."""
        return cls(collection.store, RagkitEmbeddings(embedder=collection.embedder))

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        store: str = "faiss",
        collection: str = "langchain",
        data_dir: str | Path = ".rag",
        url: str | None = None,
        options: Mapping[str, str | int | float | bool] | None = None,
    ) -> RagkitVectorStore:
        """:meth:`open`, then :meth:`add_texts`."""
        vs = cls.open(
            embedding,
            store=store,
            collection=collection,
            data_dir=data_dir,
            url=url,
            options=options,
        )
        vs.add_texts(texts, metadatas, ids=ids)
        return vs

    @property
    def embeddings(self) -> Embeddings:
        return self.embedding

    # --- writing -------------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: Sequence[str | None] | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> list[str]:
        """Embed and write ``texts``, replacing any with the same id. ``ids`` may hold
        ``None`` for a text without one (it gets a UUID), as ``add_documents`` passes them."""
        texts = list(texts)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ContractError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        if ids is not None and len(ids) != len(texts):
            raise ContractError(f"{len(texts)} texts but {len(ids)} ids")
        if batch_size < 1:
            raise ContractError(f"batch_size must be a positive integer, got {batch_size}")
        given = ids if ids is not None else [None] * len(texts)
        out = [i if i is not None else str(uuid.uuid4()) for i in given]
        seen: set[str] = set()
        for i in out:
            if i in seen:
                raise ContractError(f"id {i!r} appears twice in one call")
            seen.add(i)
        metas = metadatas if metadatas is not None else [{}] * len(texts)
        chunks = [Chunk(i, t, encode(m)) for i, t, m in zip(out, texts, metas, strict=True)]
        limit = self.store.capabilities.max_batch_size
        step = min(batch_size, limit) if limit else batch_size
        for part in batched(chunks, step):
            vectors = self.embedding.embed_documents([c.text for c in part])
            self.store.upsert(list(part), np.asarray(vectors, dtype=np.float32))
        return out

    def delete(self, ids: Sequence[str] | None = None) -> bool:
        """Remove documents by id (ids that are not there are ignored); ``None`` removes
        every document, as LangChain's contract says."""
        if ids is None:
            every = [c.id for batch, _ in self.store.scan(batch_size=1000) for c in batch]
            for part in batched(every, 1000):
                self.store.delete(list(part))
            return True
        self.store.delete(list(ids))
        return True

    # --- reading -------------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return [_document(c) for c in self.store.get(list(ids))]

    def similarity_search(
        self, query: str, k: int = 4, *, filter: FilterArg = None
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, *, filter: FilterArg = None
    ) -> list[tuple[Document, float]]:
        vector = self.embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter=filter)

    def similarity_search_by_vector(
        self, embedding: Sequence[float], k: int = 4, *, filter: FilterArg = None
    ) -> list[Document]:
        hits = self.similarity_search_with_score_by_vector(embedding, k, filter=filter)
        return [doc for doc, _ in hits]

    def similarity_search_with_score_by_vector(
        self, embedding: Sequence[float], k: int = 4, *, filter: FilterArg = None
    ) -> list[tuple[Document, float]]:
        """Documents nearest ``embedding`` with their cosine similarity, best first."""
        hits = self.store.search(_vector(embedding), k=k, where=filter)
        return [(_document(h.chunk), float(h.score)) for h in hits]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        *,
        filter: FilterArg = None,
    ) -> list[Document]:
        vector = self.embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter=filter
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        *,
        filter: FilterArg = None,
    ) -> list[Document]:
        """ragkit's MMR (:func:`rag.retrieval.mmr_rerank`) over the ``fetch_k`` nearest
        documents, re-embedded with this store's embedding (a store returns no vectors)."""
        query = _vector(embedding)
        hits: list[Hit] = self.store.search(query, k=max(k, fetch_k), where=filter)
        if not hits:
            return []
        vectors = np.asarray(
            self.embedding.embed_documents([h.chunk.text for h in hits]), dtype=np.float32
        )
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        picked = mmr_rerank(query / np.linalg.norm(query), hits, vectors, k=k, lam=lambda_mult)
        return [_document(h.chunk) for h in picked]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return _relevance

    # --- lifetime ------------------------------------------------------------------------

    def drop(self) -> None:
        """Delete the whole collection from its store."""
        self.store.drop()

    def close(self) -> None:
        """Close the store if this object opened it (a collection closes its own)."""
        if self.owns_store:
            self.store.close()

    def __enter__(self) -> RagkitVectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _relevance(score: float) -> float:
    # Clamped: a float32 cosine of a vector with itself can come out as 1.0000001.
    return min(1.0, max(0.0, (1.0 + score) / 2.0))


def _vector(embedding: Sequence[float]) -> np.ndarray:
    return np.asarray(embedding, dtype=np.float32)


def _document(chunk: Chunk) -> Document:
    return Document(id=chunk.id, page_content=chunk.text, metadata=decode(chunk.metadata))
