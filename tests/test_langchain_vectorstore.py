"""LangChain's standard ``VectorStore`` suite over every registered ragkit store.

``langchain-tests``' ``VectorStoreIntegrationTests``, subclassed as its documentation says,
with the suite's own deterministic embeddings; the ``backend`` fixture runs it on FAISS,
Chroma, Qdrant and pgvector (and on any store plugin installed), each on its real engine
(``tests/store_support.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from apps.langchain import RagkitVectorStore
from rag import plugins

pytest_plugins = ["tests.store_support"]
#: The standard suite's async tests run on anyio, as ragkit's own do.
pytestmark = pytest.mark.anyio

STORES = plugins.registry().names("stores")


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, store_ready: Callable[[str], Path]) -> str:
    store_ready(request.param)
    return request.param


class TestRagkitVectorStore(VectorStoreIntegrationTests):
    @pytest.fixture
    def vectorstore(self, backend: str, data_dir: Path) -> Iterator[RagkitVectorStore]:
        vs = RagkitVectorStore.open(
            self.get_embeddings(),
            store=backend,
            collection=f"lc{uuid.uuid4().hex[:12]}",
            data_dir=data_dir,
        )
        try:
            yield vs
        finally:
            vs.drop()
            vs.close()
