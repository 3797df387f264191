"""What LangChain users do on day one, on every registered store: documents from LangChain's
Markdown header splitter and with the metadata its common loaders write come back
unchanged; ``max_marginal_relevance_search`` picks what LangChain's own MMR picks;
LangChain's ``index()`` with a record manager drives a ragkit store (incremental, cleanup
``full``) and leaves in it what ``rag ingest`` leaves in a collection."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_core.indexing import InMemoryRecordManager, index
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from langchain_text_splitters import MarkdownHeaderTextSplitter

from apps import cli
from apps.langchain import RagkitEmbeddings, RagkitVectorStore
from apps.langchain.metadata import RESERVED
from rag import Settings, open_collection, plugins
from rag.chunking import Chunker, ChunkerSettings
from rag.errors import FilterError, MetadataError
from rag.source import SourceItem, SourceOptions, open_source
from tests.conftest import DATA

pytest_plugins = ["tests.store_support"]
pytestmark = pytest.mark.anyio

STORES = plugins.registry().names("stores")
HASHING = ("hashing-384", "hashing")


@pytest.fixture(params=STORES)
def backend(request: pytest.FixtureRequest, store_ready: Callable[[str], Path]) -> str:
    store_ready(request.param)
    return request.param


@pytest.fixture(scope="module")
def embeddings() -> RagkitEmbeddings:
    return RagkitEmbeddings(*HASHING)


@pytest.fixture
def vs(backend: str, data_dir: Path, embeddings: RagkitEmbeddings) -> Iterator[RagkitVectorStore]:
    store = RagkitVectorStore.open(
        embeddings, store=backend, collection=f"lc{uuid.uuid4().hex[:12]}", data_dir=data_dir
    )
    try:
        yield store
    finally:
        store.drop()
        store.close()


# --- metadata round trips --------------------------------------------------------------------


def test_markdown_header_splits_round_trip(vs: RagkitVectorStore) -> None:
    splitter = MarkdownHeaderTextSplitter(
        [("#", "Header 1"), ("##", "Header 2"), ("###", "Header 3")]
    )
    docs = [
        doc
        for name in ("08-vector-stores.md", "09-filters.md")
        for doc in splitter.split_text((DATA / name).read_text(encoding="utf-8"))
    ]
    assert len(docs) > 10 and all("Header 1" in d.metadata for d in docs)
    ids = vs.add_documents(docs)
    expected = [
        Document(id=i, page_content=d.page_content, metadata=d.metadata)
        for i, d in zip(ids, docs, strict=True)
    ]
    assert vs.get_by_ids(ids) == expected
    # Keys with spaces are plain ragkit metadata: stored as they are, and filtered on.
    assert all(RESERVED not in c.metadata for c in vs.store.get(ids))
    section = docs[5].metadata["Header 2"]
    found = vs.similarity_search("filters", k=len(docs), filter={"Header 2": section})
    assert sorted(d.id for d in found) == sorted(
        i for i, d in zip(ids, docs, strict=True) if d.metadata.get("Header 2") == section
    )
    assert all(d in expected for d in found)


#: Metadata as LangChain's common loaders write it (PyPDFLoader, the Unstructured loaders,
#: WebBaseLoader, JSONLoader, CSVLoader), and the shapes ragkit's rule does not store
#: natively: lists, nested objects, None, big integers, keys the rule refuses, the reserved
#: key itself, a NUL, and a double qdrant-edge would change in its last digit.
LOADER_METADATA: dict[str, dict[str, Any]] = {
    "pypdf": {
        "producer": "pdfTeX-1.40.25",
        "creator": "LaTeX with hyperref",
        "creationdate": "2024-03-12T10:11:12+00:00",
        "author": "",
        "total_pages": 12,
        "page": 3,
        "page_label": "4",
        "source": "/papers/ragkit.pdf",
    },
    "unstructured": {
        "source": "report.pdf",
        "filetype": "application/pdf",
        "languages": ["eng"],
        "page_number": 2,
        "category": "NarrativeText",
        "element_id": "8d0fbd3cbbd7a3dbab8a5d1b4f4a4ab4",
        "parent_id": None,
        "detection_class_prob": 0.9655443552261345,
        "coordinates": {
            "points": [[72.0, 91.5], [72.0, 110.25], [540.5, 110.25]],
            "system": "PixelSpace",
            "layout_width": 1700,
            "layout_height": 2200,
        },
        "links": [],
        "emphasized_text_contents": ["Summary"],
    },
    "web": {
        "source": "https://example.org/guide",
        "title": "Guide — ragkit",
        "description": "How to install…",
        "language": "en",
    },
    "json": {"source": "/data/records.jsonl", "seq_num": 17},
    "csv": {"source": "/data/table.csv", "row": 0},
    "odd": {
        "Header 1": "Intro",
        "título": "ñandú",
        "1st": "a key starting with a digit",
        "": "the empty key",
        "a.b": "a dotted key",
        "k" * 70: "a key over 64 characters",
        "big": 2**70,
        "neg": -(2**64),
        "nested": {"a": {"b": [1, 2.5, None, True, "x", {"c": []}]}},
        RESERVED: "a user's own value under the reserved key",
        "nul": "a\x00b",
        "flag": False,
        "small": 1e-300,
        "inf": math.inf,
    },
}


def test_loader_metadata_round_trips(vs: RagkitVectorStore) -> None:
    docs = [
        Document(id=name, page_content=f"text of the {name} document", metadata=meta)
        for name, meta in LOADER_METADATA.items()
    ]
    ids = vs.add_documents(docs)
    assert ids == list(LOADER_METADATA)
    assert vs.get_by_ids(ids) == docs
    found = vs.similarity_search("document", k=len(docs))
    assert sorted(found, key=lambda d: d.id or "") == sorted(docs, key=lambda d: d.id or "")
    # The native copies are filterable with ragkit's language, keys with spaces included;
    # what went into the JSON object is not (a missing field matches nothing).
    cases: list[tuple[dict[str, Any], list[str]]] = [
        ({"page": {"$gte": 3}}, ["pypdf"]),
        ({"Header 1": "Intro"}, ["odd"]),
        ({"detection_class_prob": {"$gt": 0.9}}, ["unstructured"]),
        ({"source": {"$in": ["/data/table.csv", "/data/records.jsonl"]}}, ["csv", "json"]),
        ({"$not": {"flag": False}}, ["csv", "json", "pypdf", "unstructured", "web"]),
        ({"languages": "eng"}, []),
    ]
    for where, expected in cases:
        got = vs.similarity_search("document", k=len(docs), filter=where)
        assert sorted(d.id for d in got) == expected, where


def test_what_json_cannot_hold_is_refused(vs: RagkitVectorStore) -> None:
    for key, bad in [("when", datetime(2024, 1, 2)), ("nested", {"a": {1: "an int key"}})]:
        with pytest.raises(MetadataError, match=key):
            vs.add_texts(["a", "b"], [{"ok": 1}, {key: bad}])
    assert vs.store.count() == 0  # nothing of a refused call is written
    # Documented: JSON has no tuples, so a tuple comes back as a list.
    ids = vs.add_texts(["a"], [{"points": ((1.0, 2.0), (3.0, 4.5))}])
    assert vs.get_by_ids(ids)[0].metadata == {"points": [[1.0, 2.0], [3.0, 4.5]]}


def test_async_round_trip_and_delete_all(vs: RagkitVectorStore) -> None:
    import anyio

    docs = [Document(page_content=f"doc {i}", metadata={"tags": [i, str(i)]}) for i in range(5)]

    async def main() -> list[Document]:
        ids = await vs.aadd_documents(docs)
        back = await vs.aget_by_ids(ids)
        assert [d.metadata for d in back] == [d.metadata for d in docs]
        hits = await vs.asimilarity_search_with_relevance_scores("doc 3", k=5)
        assert hits[0][0].page_content == "doc 3"
        assert all(0.0 <= s <= 1.0 for _, s in hits) and hits[0][1] == pytest.approx(1.0)
        await vs.adelete()  # no ids: everything, as LangChain's contract says
        return await vs.asimilarity_search("doc", k=5)

    assert anyio.run(main) == []
    assert vs.store.count() == 0


# --- MMR -------------------------------------------------------------------------------------

MMR_TEXTS = [
    ("ragkit installs with pip install ragkit", "install"),
    ("ragkit installs with pip install ragkit today", "install"),
    ("ragkit installs with pip install ragkit quickly", "install"),
    ("install the faiss extra with pip", "stores"),
    ("the qdrant store runs in process with pip", "stores"),
    ("pgvector keeps vectors in postgres", "stores"),
    ("the moon orbits the earth", "other"),
]


def test_max_marginal_relevance_search(vs: RagkitVectorStore, embeddings: RagkitEmbeddings) -> None:
    texts = [t for t, _ in MMR_TEXTS]
    vs.add_texts(texts, [{"topic": topic} for _, topic in MMR_TEXTS])
    query = "how do I install ragkit with pip"
    plain = vs.similarity_search(query, k=3)
    assert {d.page_content for d in plain} == set(texts[:3])

    mmr = vs.max_marginal_relevance_search(query, k=3, fetch_k=7, lambda_mult=0.3)
    # The oracle: LangChain's own MMR over the same candidates.
    qv = np.array(embeddings.embed_query(query))
    pool = vs.similarity_search_by_vector(qv.tolist(), k=7)
    picks = maximal_marginal_relevance(
        qv, embeddings.embed_documents([d.page_content for d in pool]), lambda_mult=0.3, k=3
    )
    assert [d.id for d in mmr] == [pool[i].id for i in picks]
    assert len({d.page_content for d in mmr} & set(texts[:3])) < 3  # diversified

    retriever = vs.as_retriever(
        search_type="mmr", search_kwargs={"k": 3, "fetch_k": 7, "lambda_mult": 0.3}
    )
    assert [d.id for d in retriever.invoke(query)] == [d.id for d in mmr]
    only = vs.max_marginal_relevance_search(query, k=2, fetch_k=7, filter={"topic": "stores"})
    assert len(only) == 2 and all(d.metadata["topic"] == "stores" for d in only)


def test_arguments_are_never_swallowed(vs: RagkitVectorStore) -> None:
    vs.add_texts(["a"], [{"n": 1}])
    with pytest.raises(TypeError):
        vs.similarity_search("a", k=1, filters={"n": 2})  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        vs.as_retriever(search_kwargs={"k": 1, "where": {"n": 2}}).invoke("a")
    with pytest.raises(FilterError):
        vs.similarity_search("a", k=1, filter={"n": {"$regex": "x"}})


# --- LangChain's index() against rag ingest ---------------------------------------------------


def _ragkit_chunks(corpus: Path) -> list[Document]:
    """The chunks `rag ingest` makes of ``corpus``, as LangChain documents: ragkit's own
    filesystem source and chunker, through their public API."""
    from rag.embeddings import load_embedder

    source = open_source("filesystem", SourceOptions(targets=(str(corpus),)))
    chunker = Chunker.for_embedder(ChunkerSettings(), load_embedder(*HASHING))
    docs = []
    for item in source.scan():
        if isinstance(item, SourceItem):
            for chunk in chunker.chunk(source.load(item)):
                docs.append(Document(page_content=chunk.text, metadata=dict(chunk.metadata)))
    return docs


def _contents(store: Any) -> list[tuple[str, str]]:
    """Every chunk's text and metadata, as stored, in a fixed order (the reserved key of
    the LangChain adapter left out: it holds exact copies of long doubles)."""
    rows = []
    for chunks, _ in store.scan(batch_size=500):
        for c in chunks:
            meta = {k: v for k, v in c.metadata.items() if k != RESERVED}
            rows.append((c.text, json.dumps(meta, sort_keys=True)))
    return sorted(rows)


def test_index_api_agrees_with_rag_ingest(
    backend: str,
    data_dir: Path,
    sample_corpus: Path,
    embeddings: RagkitEmbeddings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RAG_EMBED_MODEL", HASHING[0])
    monkeypatch.setenv("RAG_EMBED_BACKEND", HASHING[1])
    settings = Settings(data_dir=data_dir, collection="viaingest", store=backend)
    vs = RagkitVectorStore.open(embeddings, store=backend, collection="viaindex", data_dir=data_dir)
    manager = InMemoryRecordManager(namespace=f"{backend}/viaindex")
    manager.create_schema()

    def rag_ingest() -> dict[str, Any]:
        argv = ["ingest", str(sample_corpus), "--json", "--data-dir", str(data_dir)]
        code = cli.main([*argv, "--collection", "viaingest", "--store", backend])
        out = capsys.readouterr().out
        assert code == 0, out
        return json.loads(out)

    def lc_index() -> dict[str, int]:
        return dict(
            index(
                _ragkit_chunks(sample_corpus),
                manager,
                vs,
                cleanup="full",
                source_id_key="source",
                key_encoder="sha256",
            )
        )

    def ingested() -> list[tuple[str, str]]:
        with open_collection(settings) as col:
            return _contents(col.store)

    try:
        first, report = lc_index(), rag_ingest()
        total = report["total_chunks"]
        assert first == {"num_added": total, "num_updated": 0, "num_skipped": 0, "num_deleted": 0}
        before = _contents(vs.store)
        assert before == ingested()

        changed, removed = sample_corpus / "09-filters.md", sample_corpus / "14-troubleshooting.md"
        changed.write_text(
            changed.read_text(encoding="utf-8") + "\n\n## Added\n\nA paragraph added later.\n",
            encoding="utf-8",
        )
        removed.unlink()
        old = {str(changed): 0, str(removed): 0}
        for _, meta in before:
            source = json.loads(meta)["source"]
            if source in old:
                old[source] += 1
        second, report = lc_index(), rag_ingest()
        assert (report["updated"], report["deleted"]) == (1, 1)
        after = _contents(vs.store)
        new = sum(1 for _, meta in after if json.loads(meta)["source"] == str(changed))
        assert second == {
            "num_added": new,
            "num_updated": 0,
            "num_skipped": total - sum(old.values()),
            "num_deleted": sum(old.values()),
        }
        assert after == ingested()
        assert len(after) == report["total_chunks"] == vs.store.count()

        third = lc_index()
        assert third["num_added"] == third["num_deleted"] == 0
        assert third["num_skipped"] == len(after)
    finally:
        vs.drop()
        vs.close()
