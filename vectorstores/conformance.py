"""The contract as tests: every backend passes these or declares the gap.

Use from a test module by providing a ``store_env`` fixture that returns a
:class:`StoreEnv`, then ``from vectorstores.conformance import *``. ``tests/test_conformance.py``
does this for every registered backend; a third-party backend can do the same.

Filter results are checked against :func:`rag.filters.evaluate`, the reference semantics.
An operator that a backend does not declare in ``capabilities.filter_ops`` must raise
:class:`~rag.errors.FilterError`; one it declares must give exactly the reference result.

The metadata rule of :mod:`rag.contract` holds on every store alike: what it accepts comes
back from ``get`` exactly as written (keys such as ``"Header 1"`` and ``"título"``, 64-bit
integers at both ends of the range) and can be filtered on; ``None`` values are left out;
what it refuses raises :class:`~rag.errors.MetadataError` and writes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag import plugins
from rag.errors import (
    CollectionNotFoundError,
    ContractError,
    DimensionMismatchError,
    FilterError,
    MetadataError,
)
from rag.filters import evaluate, operators, parse
from rag.store import MAX_K, StoreConfig, VectorStore
from rag.types import Chunk

__all__ = [
    "FILTER_CASES",
    "REFUSED_METADATA",
    "RULE_FILTER_CASES",
    "StoreEnv",
    "dataset",
    "rule_dataset",
    "test_bad_k_is_a_contract_error",
    "test_count_get_and_missing_ids",
    "test_create_false_on_missing_collection",
    "test_delete_missing_and_present",
    "test_dimension_mismatch",
    "test_drop",
    "test_duplicate_ids_are_refused",
    "test_empty_collection",
    "test_filters_match_reference",
    "test_filters_prefilter_returns_k",
    "test_k_larger_than_collection",
    "test_metadata_rule_filters_match_reference",
    "test_metadata_rule_round_trips",
    "test_non_unit_vectors_rank_by_cosine",
    "test_none_values_are_left_out",
    "test_persistence_across_processes",
    "test_refused_metadata_writes_nothing",
    "test_scan_returns_everything",
    "test_search_matches_exact",
    "test_unicode_and_large_metadata",
    "test_upsert_is_idempotent",
    "test_upsert_replaces",
    "test_zero_vector_is_refused",
]

DIM = 16
N = 120


@dataclass
class StoreEnv:
    """How the conformance tests reach one backend."""

    backend: str
    config: StoreConfig

    def open(
        self, collection: str | None = None, *, dim: int = DIM, create: bool = True
    ) -> VectorStore:
        cls = plugins.load("stores", self.backend)
        name = collection or f"t{uuid.uuid4().hex[:12]}"
        return cls(name, dim=dim, config=self.config, create=create)


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def dataset(seed: int = 7, n: int = N) -> tuple[list[Chunk], np.ndarray]:
    """Chunks with metadata that exercises the filter semantics: ints, floats, booleans,
    unicode strings, timestamps, and a field present on only some records."""
    rng = np.random.default_rng(seed)
    tags = ["a", "b", "ç", "日本"]
    chunks = []
    for i in range(n):
        meta: dict = {
            "source": f"/docs/file{i % 10}.md",
            "n": i,
            "x": round(float(rng.uniform(0, 1)), 4),
            "even": i % 2 == 0,
            "flag": i % 3,
            "tag": tags[i % 4],
            "mtime": 1_700_000_000 + i * 86_400,  # from 2023-11-14, one day apart
        }
        if i % 3 == 0:
            meta["opt"] = "yes" if i % 2 == 0 else "no"
        chunks.append(Chunk(str(uuid.UUID(int=i + 1)), f"chunk number {i} — ünïcödé ✓", meta))
    return chunks, _unit(rng, n)


FILTER_CASES: list[dict] = [
    {"tag": "a"},
    {"tag": "日本"},
    {"tag": {"$ne": "a"}},
    {"n": {"$gt": 100}},
    {"n": {"$gte": 30, "$lt": 40}},
    {"x": {"$lte": 0.25}},
    {"n": {"$in": [1, 2.0, 3, 500]}},
    {"tag": {"$in": ["a", "ç"]}},
    {"tag": {"$nin": ["a", "b"]}},
    {"even": True},
    {"even": False},
    {"even": 1},
    {"flag": 1},
    {"flag": {"$ne": 0}},
    {"opt": "yes"},
    {"opt": {"$ne": "yes"}},
    {"opt": {"$nin": ["no"]}},
    {"$not": {"opt": "yes"}},
    {"tag": "nope"},
    {"n": {"$gt": 5}, "tag": "b"},
    {"$and": [{"n": {"$lt": 60}}, {"even": True}]},
    {"$or": [{"tag": "a"}, {"n": {"$gte": 110}}]},
    {"$or": [{"$and": [{"tag": "b"}, {"x": {"$gt": 0.5}}]}, {"$not": {"n": {"$lt": 115}}}]},
    {"$not": {"$or": [{"tag": "a"}, {"even": True}]}},
    {"mtime": {"$gte": "2024-01-01", "$lt": "2024-02-01T00:00:00Z"}},
    {"source": {"$in": ["/docs/file1.md", "/docs/file2.md"]}},
]


def _exact_top(vectors: np.ndarray, query: np.ndarray, candidates: list[int], k: int) -> list[int]:
    scores = vectors[candidates] @ query
    order = np.argsort(-scores, kind="stable")[:k]
    return [candidates[i] for i in order]


def _loaded(env: StoreEnv) -> tuple[VectorStore, list[Chunk], np.ndarray]:
    chunks, vecs = dataset()
    store = env.open()
    store.upsert(chunks, vecs)
    return store, chunks, vecs


def test_empty_collection(store_env: StoreEnv) -> None:
    store = env_open = store_env.open()
    try:
        assert env_open.count() == 0
        assert store.search(_unit(np.random.default_rng(1), 1)[0], k=5) == []
        assert store.get(["00000000-0000-0000-0000-000000000001"]) == []
        assert list(store.scan()) == []
        store.delete(["00000000-0000-0000-0000-000000000001"])
    finally:
        store.close()


def test_upsert_is_idempotent(store_env: StoreEnv) -> None:
    store, chunks, vecs = _loaded(store_env)
    try:
        first = [h.id for h in store.search(vecs[5], k=10)]
        store.upsert(chunks, vecs)
        store.upsert(chunks[:7], vecs[:7])
        assert store.count() == len(chunks)
        assert [h.id for h in store.search(vecs[5], k=10)] == first
    finally:
        store.close()


def test_upsert_replaces(store_env: StoreEnv) -> None:
    store, chunks, vecs = _loaded(store_env)
    try:
        target = chunks[10]
        new_vec = vecs[90].copy()
        store.upsert(
            [Chunk(target.id, "replaced text", {"tag": "new", "n": -1})], new_vec.reshape(1, -1)
        )
        assert store.count() == len(chunks)
        got = store.get([target.id])[0]
        assert got.text == "replaced text"
        assert got.metadata == {"tag": "new", "n": -1}
        top2 = {h.id for h in store.search(new_vec, k=2)}
        assert top2 == {target.id, chunks[90].id}
    finally:
        store.close()


def test_count_get_and_missing_ids(store_env: StoreEnv) -> None:
    store, chunks, _ = _loaded(store_env)
    try:
        assert store.count() == len(chunks)
        ids = [chunks[3].id, "ffffffff-ffff-ffff-ffff-ffffffffffff", chunks[1].id, chunks[2].id]
        got = store.get(ids)
        assert [c.id for c in got] == [chunks[3].id, chunks[1].id, chunks[2].id]
        assert got[0] == chunks[3]
    finally:
        store.close()


def test_delete_missing_and_present(store_env: StoreEnv) -> None:
    store, chunks, vecs = _loaded(store_env)
    try:
        store.delete(["ffffffff-ffff-ffff-ffff-ffffffffffff"])
        assert store.count() == len(chunks)
        gone = [c.id for c in chunks[:20]]
        store.delete([*gone, "ffffffff-ffff-ffff-ffff-ffffffffffff"])
        assert store.count() == len(chunks) - 20
        assert store.get(gone) == []
        hits = store.search(vecs[0], k=len(chunks))
        assert not {h.id for h in hits} & set(gone)
        assert len(hits) == len(chunks) - 20
    finally:
        store.close()


def test_search_matches_exact(store_env: StoreEnv) -> None:
    store, chunks, vecs = _loaded(store_env)
    rng = np.random.default_rng(3)
    queries = _unit(rng, 20)
    try:
        overlap = []
        for q in queries:
            hits = store.search(q, k=10)
            expected = [chunks[i].id for i in _exact_top(vecs, q, list(range(len(chunks))), 10)]
            got = [h.id for h in hits]
            overlap.append(len(set(got) & set(expected)) / 10)
            scores = [h.score for h in hits]
            assert scores == sorted(scores, reverse=True), "hits must come best first"
            by_id = {c.id: i for i, c in enumerate(chunks)}
            for h in hits:  # scores are cosine similarities
                assert h.score == pytest.approx(float(vecs[by_id[h.id]] @ q), abs=2e-3)
            if store.capabilities.exact_search:
                assert got == expected
        assert np.mean(overlap) >= 0.95
    finally:
        store.close()


def test_k_larger_than_collection(store_env: StoreEnv) -> None:
    store = store_env.open()
    chunks, vecs = dataset(n=7)
    try:
        store.upsert(chunks, vecs)
        hits = store.search(vecs[0], k=50)
        assert len(hits) == 7
        assert hits[0].id == chunks[0].id
    finally:
        store.close()


@pytest.mark.parametrize("spec", FILTER_CASES, ids=lambda s: json.dumps(s, ensure_ascii=False))
def test_filters_match_reference(store_env: StoreEnv, spec: dict) -> None:
    store, chunks, _vecs = _loaded(store_env)
    flt = parse(spec)
    q = _unit(np.random.default_rng(11), 1)[0]
    try:
        if not operators(flt) <= store.capabilities.filter_ops:
            with pytest.raises(FilterError):
                store.search(q, k=5, where=flt)
            pytest.skip(
                f"{store.name} declares it cannot express {sorted(operators(flt) - store.capabilities.filter_ops)}"
            )
        expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
        hits = store.search(q, k=len(chunks), where=flt)
        assert {h.id for h in hits} == expected
        assert len(hits) == len(expected)
    finally:
        store.close()


def test_filters_prefilter_returns_k(store_env: StoreEnv) -> None:
    """A selective filter still yields k hits, the best among the matching records."""
    store, chunks, vecs = _loaded(store_env)
    try:
        flt = parse({"n": {"$in": [7, 19, 33, 64, 71, 88, 99, 118]}})
        matching = [i for i, c in enumerate(chunks) if evaluate(flt, c.metadata)]
        q = vecs[50]
        hits = store.search(q, k=5, where=flt)
        assert len(hits) == 5
        assert [h.id for h in hits] == [chunks[i].id for i in _exact_top(vecs, q, matching, 5)]
    finally:
        store.close()


def test_unicode_and_large_metadata(store_env: StoreEnv) -> None:
    store = store_env.open()
    big = "Ω≈ç√∫ 漢字 emoji 🚀 " * 600  # about 12,000 characters
    chunk = Chunk(
        "0f0f0f0f-0000-4000-8000-000000000001",
        "Zürich ✓ 東京 🚀 " * 200,
        {
            "title": big,
            "lang": "日本語",
            "quote": "he said \"hi\" \\ 'x'",
            "n": 2**40,
            "f": -1.5e-8,
        },
    )
    try:
        store.upsert([chunk], _unit(np.random.default_rng(5), 1))
        got = store.get([chunk.id])[0]
        assert got == chunk
        hits = store.search(
            _unit(np.random.default_rng(5), 1)[0], k=1, where=parse({"lang": "日本語"})
        )
        assert [h.id for h in hits] == [chunk.id]
        assert hits[0].chunk == chunk
    finally:
        store.close()


def test_dimension_mismatch(store_env: StoreEnv) -> None:
    store = store_env.open()
    name = store.collection
    try:
        chunks, vecs = dataset(n=3)
        store.upsert(chunks, vecs)
        with pytest.raises(DimensionMismatchError) as info:
            store.upsert(chunks, np.ones((3, DIM + 1), dtype=np.float32))
        assert isinstance(info.value, ValueError)
        with pytest.raises(DimensionMismatchError) as info:
            store.search(np.ones(DIM - 1, dtype=np.float32), k=1)
        assert isinstance(info.value, ValueError)
    finally:
        store.close()
    with pytest.raises(DimensionMismatchError):
        store_env.open(name, dim=DIM * 2).close()


def test_create_false_on_missing_collection(store_env: StoreEnv) -> None:
    with pytest.raises(CollectionNotFoundError):
        store_env.open(f"missing{uuid.uuid4().hex[:8]}", create=False).close()


def test_drop(store_env: StoreEnv) -> None:
    store, _, _ = _loaded(store_env)
    name = store.collection
    store.drop()
    with pytest.raises(CollectionNotFoundError):
        store_env.open(name, create=False).close()
    fresh = store_env.open(name)
    try:
        assert fresh.count() == 0
    finally:
        fresh.close()


def test_scan_returns_everything(store_env: StoreEnv) -> None:
    store, chunks, vecs = _loaded(store_env)
    try:
        seen: dict[str, tuple[Chunk, np.ndarray]] = {}
        for batch, batch_vecs in store.scan(batch_size=25):
            assert len(batch) == len(batch_vecs) <= 25
            for c, v in zip(batch, batch_vecs, strict=True):
                seen[c.id] = (c, v)
        assert len(seen) == len(chunks)
        for c, v in zip(chunks, vecs, strict=True):
            assert seen[c.id][0] == c
            np.testing.assert_allclose(seen[c.id][1], v, atol=1e-3)
    finally:
        store.close()


# --- the contract's checks, the same on every store -----------------------------------------


def test_duplicate_ids_are_refused(store_env: StoreEnv) -> None:
    store = store_env.open()
    chunks, vecs = dataset(n=3)
    try:
        with pytest.raises(ContractError) as info:
            store.upsert([chunks[0], chunks[1], chunks[0]], vecs)
        assert isinstance(info.value, ValueError)
        assert store.count() == 0
    finally:
        store.close()


@pytest.mark.parametrize("k", [0, -1, MAX_K + 1, True, 2.0, "5"], ids=repr)
def test_bad_k_is_a_contract_error(store_env: StoreEnv, k: object) -> None:
    store = store_env.open()
    chunks, vecs = dataset(n=3)
    try:
        store.upsert(chunks, vecs)
        with pytest.raises(ContractError) as info:
            store.search(vecs[0], k=k)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)
        assert len(store.search(vecs[0], k=MAX_K)) == 3  # the largest k is fine
    finally:
        store.close()


def test_non_unit_vectors_rank_by_cosine(store_env: StoreEnv) -> None:
    """Vectors of any length are accepted and ranked by cosine similarity: as if normalised."""
    chunks, vecs = dataset(n=40)
    scale = np.random.default_rng(23).uniform(0.2, 9.0, size=(len(chunks), 1)).astype(np.float32)
    store = store_env.open()
    try:
        store.upsert(chunks, vecs * scale)
        q = _unit(np.random.default_rng(29), 1)[0]
        unit_hits = store.search(q, k=10)
        long_hits = store.search(q * 7.5, k=10)
        assert [h.id for h in long_hits] == [h.id for h in unit_hits]
        np.testing.assert_allclose(
            [h.score for h in long_hits], [h.score for h in unit_hits], rtol=0, atol=1e-5
        )
        by_id = {c.id: i for i, c in enumerate(chunks)}
        for h in unit_hits:
            assert h.score == pytest.approx(float(vecs[by_id[h.id]] @ q), abs=2e-3)
        for _, batch_vecs in store.scan():
            np.testing.assert_allclose(np.linalg.norm(batch_vecs, axis=1), 1.0, atol=1e-3)
    finally:
        store.close()


def test_zero_vector_is_refused(store_env: StoreEnv) -> None:
    store = store_env.open()
    chunks, vecs = dataset(n=3)
    try:
        vecs[1] = 0.0
        with pytest.raises(ContractError) as info:
            store.upsert(chunks, vecs)
        assert isinstance(info.value, ValueError)
        assert store.count() == 0
        with pytest.raises(ContractError):
            store.search(np.zeros(DIM, dtype=np.float32), k=1)
    finally:
        store.close()


# --- the metadata rule -----------------------------------------------------------------------

#: Headings as LangChain's Markdown splitter writes them (under the key "Header 1").
_HEADINGS = ["Intro", "Usage", "Über uns", "日本語", ""]
#: Both ends of the signed 64-bit range and their neighbours, which doubles cannot tell apart.
_BIG = [2**63 - 1, -(2**63), 2**63 - 2, -(2**63) + 1]
#: Finite floats of every size; 1e20 and up have no fractional digits to keep them floats.
_FLOATS = [0.1, -2.5, 1e20, -1.7976931348623157e308, 5e-324, 0.0]


def rule_dataset(n: int = 30) -> tuple[list[Chunk], np.ndarray]:
    """Chunks whose metadata sits on the edges of the rule: keys with a space, a ``-``, a
    leading ``_`` or letters outside ASCII; integers at both ends of the signed 64-bit
    range; floats from the smallest to the largest; booleans; empty and non-ASCII strings;
    a field that only some records have."""
    chunks = []
    for i in range(n):
        meta: dict[str, Any] = {
            "Header 1": _HEADINGS[i % len(_HEADINGS)],
            "título": f"capítulo {i % 3} — ✓ 🚀",
            "_x": i,
            "content-type": "text/markdown" if i % 2 else "text/plain",
            "big": _BIG[i % len(_BIG)],
            "real": _FLOATS[i % len(_FLOATS)],
            "flag": i % 3 == 0,
            "off": False,
            "empty": "",
        }
        if i % 4 == 0:
            meta["Header 2"] = f"Section {i}"
        chunks.append(Chunk(str(uuid.UUID(int=10_000 + i)), f"chunk {i} — ü", meta))
    return chunks, _unit(np.random.default_rng(31), n)


RULE_FILTER_CASES: list[dict] = [
    {"Header 1": "Intro"},
    {"Header 1": {"$in": ["Über uns", "日本語", ""]}},
    {"Header 1": {"$ne": "Intro"}},
    {"Header 1": {"$nin": ["Intro", "Usage"]}, "flag": True},
    {"$not": {"Header 1": "Usage"}},
    {"Header 2": {"$ne": "Section 0"}},
    {"$not": {"Header 2": "Section 4"}},
    {"título": "capítulo 1 — ✓ 🚀"},
    {"content-type": {"$nin": ["text/plain"]}},
    {"_x": {"$gte": 5, "$lt": 12}},
    {"$or": [{"_x": 3}, {"Header 1": "日本語"}]},
    {"empty": ""},
    {"off": False},
    {"real": 0.1},
    {"real": {"$gt": 1}},
    {"big": {"$lt": 0}},
    {"big": 2**63 - 1},
    {"big": {"$in": [-(2**63), 2**63 - 2]}},
    {"big": {"$nin": [-(2**63) + 1]}},
]


def _assert_filter(store: VectorStore, flt_spec: dict, metas: list[dict], ids: list[str]) -> None:
    """``store`` answers ``flt_spec`` as the reference does over ``metas`` (or refuses an
    operator it does not declare)."""
    flt = parse(flt_spec)
    q = _unit(np.random.default_rng(37), 1)[0]
    if not operators(flt) <= store.capabilities.filter_ops:
        with pytest.raises(FilterError):
            store.search(q, k=5, where=flt)
        return
    expected = {i for i, m in zip(ids, metas, strict=True) if evaluate(flt, m)}
    hits = store.search(q, k=len(ids), where=flt)
    assert {h.id for h in hits} == expected, flt_spec
    assert len(hits) == len(expected), flt_spec


def test_metadata_rule_round_trips(store_env: StoreEnv) -> None:
    """What the rule accepts comes back from get, search and scan as it was written,
    types included (an int stays an int, a float a float)."""
    chunks, vecs = rule_dataset()
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        got = store.get([c.id for c in chunks])
        assert got == chunks
        for mine, theirs in zip(chunks, got, strict=True):
            assert {k: type(v) for k, v in theirs.metadata.items()} == {
                k: type(v) for k, v in mine.metadata.items()
            }
        hits = store.search(vecs[5], k=3)
        assert hits[0].chunk == chunks[5]
        scanned = {c.id: c for batch, _ in store.scan(batch_size=7) for c in batch}
        assert [scanned[c.id] for c in chunks] == chunks
    finally:
        store.close()


def test_metadata_rule_filters_match_reference(store_env: StoreEnv) -> None:
    chunks, vecs = rule_dataset()
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        for spec in RULE_FILTER_CASES:
            _assert_filter(store, spec, [c.metadata for c in chunks], [c.id for c in chunks])
    finally:
        store.close()


def test_none_values_are_left_out(store_env: StoreEnv) -> None:
    """``None`` is "no value": the key is not stored, and filters see a missing field."""
    ids = [str(uuid.UUID(int=20_000 + i)) for i in range(4)]
    written = [{"k": None, "n": 1}, {"k": "v", "n": 2}, {"n": 3}, {"k": None}]
    stored = [{"n": 1}, {"k": "v", "n": 2}, {"n": 3}, {}]
    chunks = [Chunk(i, f"t{n}", m) for n, (i, m) in enumerate(zip(ids, written, strict=True))]
    vecs = _unit(np.random.default_rng(41), len(ids))
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        assert [c.metadata for c in store.get(ids)] == stored
        scanned = {c.id: c.metadata for batch, _ in store.scan() for c in batch}
        assert [scanned[i] for i in ids] == stored
        for spec in (
            {"k": {"$ne": "v"}},
            {"k": {"$nin": ["x"]}},
            {"$not": {"k": "v"}},
            {"$not": {"k": {"$ne": "v"}}},
            {"$not": {"k": {"$in": ["v", "w"]}}},
            {"k": {"$gt": 0}},
        ):
            _assert_filter(store, spec, stored, ids)
            # the reference reads None as missing too
            flt = parse(spec)
            assert [evaluate(flt, m) for m in written] == [evaluate(flt, m) for m in stored]
        # Writing None over a value removes the key.
        store.upsert([Chunk(ids[1], "t1", {"k": None, "n": 2})], vecs[1:2])
        assert store.get([ids[1]])[0].metadata == {"n": 2}
        _assert_filter(store, {"k": "v"}, [stored[0], {"n": 2}, *stored[2:]], ids)
    finally:
        store.close()


#: Metadata the rule refuses, with the test id to show for each.
REFUSED_METADATA: list[tuple[str, dict[str, Any]]] = [
    ("int-2**64", {"n": 2**64}),
    ("int-below-int64", {"n": -(2**63) - 1}),
    ("list", {"tags": ["a", "b"]}),
    ("dict", {"nested": {"k": 1}}),
    ("key-with-dot", {"a.b": 1}),
    ("key-with-dollar", {"$x": 1}),
    ("empty-key", {"": 1}),
    ("key-65-chars", {"k" * 65: 1}),
    ("key-with-newline", {"a\n": 1}),
    ("nan", {"f": float("nan")}),
    ("nul-in-string", {"s": "a\x00b"}),
]


@pytest.mark.parametrize(
    "metadata", [m for _, m in REFUSED_METADATA], ids=[i for i, _ in REFUSED_METADATA]
)
def test_refused_metadata_writes_nothing(store_env: StoreEnv, metadata: dict[str, Any]) -> None:
    chunks, vecs = dataset(n=3)
    store = store_env.open()
    try:
        store.upsert(chunks[:1], vecs[:1])
        bad = Chunk(chunks[2].id, "bad", {"ok": 1, **metadata})
        # A good new chunk, a replacement of a stored one, and the bad one: nothing lands.
        batch = [chunks[1], Chunk(chunks[0].id, "changed", {"ok": 2}), bad]
        with pytest.raises(MetadataError) as info:
            store.upsert(batch, vecs)
        assert isinstance(info.value, ValueError)
        assert store.count() == 1
        assert store.get([c.id for c in chunks]) == [chunks[0]]
    finally:
        store.close()


_CHILD = """
import json, sys
import numpy as np
from pathlib import Path
from rag.store import StoreConfig, store_class
args = json.loads(sys.argv[1])
config = StoreConfig(Path(args["data_dir"]), url=args["url"], options=args["options"])
store = store_class(args["backend"])(args["collection"], dim=args["dim"], config=config, create=False)
q = np.array(args["query"], dtype=np.float32)
print(json.dumps({"count": store.count(), "top": [h.id for h in store.search(q, k=5)]}))
store.close()
"""


def test_persistence_across_processes(store_env: StoreEnv, tmp_path: Path) -> None:
    store, chunks, vecs = _loaded(store_env)
    name = store.collection
    q = vecs[17]
    expected = [h.id for h in store.search(q, k=5)]
    store.close()
    args = {
        "backend": store_env.backend,
        "collection": name,
        "dim": DIM,
        "data_dir": str(store_env.config.data_dir),
        "url": store_env.config.url,
        "options": dict(store_env.config.options),
        "query": q.tolist(),
    }
    out = _run_child(args)
    assert out == {"count": len(chunks), "top": expected}


def _run_child(
    args: dict, runner: Callable[..., subprocess.CompletedProcess] = subprocess.run
) -> dict:
    proc = runner(
        [sys.executable, "-c", _CHILD, json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
