"""A LlamaIndex query engine over ragkit: ``RetrieverQueryEngine`` with ragkit's retriever
and LlamaIndex's own ``MockLLM`` (which answers with the prompt it was given) answers a
question about the sample corpus, and its source nodes are ragkit's hits."""

from __future__ import annotations

import pytest
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, TextNode

from apps.llamaindex import RagkitRetriever
from rag import Collection
from rag.errors import ConfigError
from rag.types import Hit

pytest_plugins = ["tests.store_support"]
pytestmark = pytest.mark.anyio

QUESTION = "Which vector stores can ragkit use?"


def _same(nodes: list[NodeWithScore], hits: list[Hit]) -> None:
    assert hits, "the collection returned nothing to compare with"
    assert all(isinstance(n.node, TextNode) for n in nodes)
    assert [(n.node.node_id, n.node.get_content(), n.node.metadata) for n in nodes] == [
        (h.id, h.chunk.text, dict(h.chunk.metadata)) for h in hits
    ]
    assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])


def test_query_engine_answers_from_ragkit_hits(sample_collection: Collection) -> None:
    engine = RetrieverQueryEngine.from_args(RagkitRetriever(sample_collection, k=3), llm=MockLLM())
    response = engine.query(QUESTION)
    hits = sample_collection.search(QUESTION, k=3)
    _same(response.source_nodes, hits)
    answer = str(response)
    assert QUESTION in answer  # MockLLM echoes its prompt: the question and the passages
    assert all(h.chunk.text in answer for h in hits)
    assert any("pgvector" in h.chunk.text for h in hits)  # the passages that answer it


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_options_reach_the_collection(sample_collection: Collection, mode: str) -> None:
    where = {"file_type": "md"}
    retriever = RagkitRetriever(sample_collection, k=4, mode=mode, where=where, mmr=True)
    _same(
        retriever.retrieve(QUESTION),
        sample_collection.search(QUESTION, k=4, mode=mode, where=where, mmr=True),
    )


async def test_aretrieve_and_defaults(sample_collection: Collection) -> None:
    nodes = await RagkitRetriever(sample_collection).aretrieve(QUESTION)
    _same(nodes, sample_collection.search(QUESTION))
    assert len(nodes) == sample_collection.settings.k
    with pytest.raises(ConfigError):
        RagkitRetriever(sample_collection, mode="sparse")
