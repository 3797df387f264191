"""LangChain's standard retriever suite over a ragkit collection, then what the suite does
not check: each of ragkit's options reaches ``Collection.search``, and the documents are
ragkit's hits. Also the ``VectorStore`` built from a collection."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests

from apps.langchain import RagkitRetriever, RagkitVectorStore
from rag import Collection
from rag.types import Hit

pytest_plugins = ["tests.store_support"]
pytestmark = pytest.mark.anyio

QUESTION = "How do I install ragkit?"


class TestRagkitRetriever(RetrieversIntegrationTests):
    @pytest.fixture(autouse=True)
    def _collection(self, sample_collection: Collection) -> None:
        # The suite builds retrievers from a property, not a fixture.
        self.collection = sample_collection

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return RagkitRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"collection": self.collection}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


def _same(docs: list[Any], hits: list[Hit]) -> None:
    assert hits, "the collection returned nothing to compare with"
    assert [(d.id, d.page_content, d.metadata) for d in docs] == [
        (h.id, h.chunk.text, dict(h.chunk.metadata)) for h in hits
    ]


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_documents_are_the_collection_hits(sample_collection: Collection, mode: str) -> None:
    where = {"file_type": "md", "source": {"$ne": "nowhere"}}
    retriever = RagkitRetriever(collection=sample_collection, k=4, mode=mode, where=where)
    docs = retriever.invoke(QUESTION)
    _same(docs, sample_collection.search(QUESTION, k=4, mode=mode, where=where))
    assert {"source", "chunk_index", "title"} <= set(docs[0].metadata)
    mmr = retriever.invoke(QUESTION, mmr=True, k=3)
    _same(mmr, sample_collection.search(QUESTION, k=3, mode=mode, where=where, mmr=True))


def test_defaults_come_from_the_collection(sample_collection: Collection) -> None:
    docs = RagkitRetriever(collection=sample_collection).invoke(QUESTION)
    s = sample_collection.settings
    _same(docs, sample_collection.search(QUESTION, k=s.k, mode=s.mode))
    assert len(docs) == s.k


def test_where_narrows_the_standing_filter(sample_collection: Collection) -> None:
    sources = sorted({str(c.metadata["source"]) for c in _all_chunks(sample_collection)})
    install = next(s for s in sources if s.endswith("02-installation.md"))
    retriever = RagkitRetriever(
        collection=sample_collection, k=50, where={"source": {"$in": sources[:4]}}
    )
    docs = retriever.invoke(QUESTION)
    assert docs and {d.metadata["source"] for d in docs} <= set(sources[:4])
    narrowed = retriever.invoke(QUESTION, where={"source": install})
    assert narrowed and {d.metadata["source"] for d in narrowed} == {install}
    assert retriever.invoke(QUESTION, where={"source": sources[-1]}) == []


def test_score_key_and_unknown_arguments(sample_collection: Collection) -> None:
    retriever = RagkitRetriever(collection=sample_collection, k=2, score_key="score")
    docs = retriever.invoke(QUESTION)
    hits = sample_collection.search(QUESTION, k=2)
    assert [d.metadata["score"] for d in docs] == pytest.approx([h.score for h in hits])
    with pytest.raises(TypeError):
        retriever.invoke(QUESTION, top_k=1)
    with pytest.raises(ValueError):  # pydantic's ValidationError
        RagkitRetriever(collection=sample_collection, mode="sparse")


async def test_ainvoke_hybrid(sample_collection: Collection) -> None:
    retriever = RagkitRetriever(collection=sample_collection, k=3, mode="hybrid")
    docs = await retriever.ainvoke(QUESTION)
    _same(docs, sample_collection.search(QUESTION, k=3, mode="hybrid"))


def test_vectorstore_from_collection(sample_collection: Collection) -> None:
    vs = RagkitVectorStore.from_collection(sample_collection)
    docs = vs.similarity_search(QUESTION, k=5, filter={"file_type": "md"})
    _same(docs, sample_collection.search(QUESTION, k=5, mode="dense", where={"file_type": "md"}))
    scored = vs.similarity_search_with_score(QUESTION, k=5)
    hits = sample_collection.search(QUESTION, k=5, mode="dense")
    assert [s for _, s in scored] == pytest.approx([h.score for h in hits])
    assert vs.get_by_ids([hits[1].id, "missing", hits[0].id]) == [docs[1], docs[0]]
    vs.close()  # the collection's store stays open: the collection owns it
    assert sample_collection.store.count() > 0


def _all_chunks(col: Collection) -> list[Any]:
    return [c for batch, _ in col.store.scan(batch_size=1000) for c in batch]
