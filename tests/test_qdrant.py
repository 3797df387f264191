"""The qdrant store: the conformance suite on local mode (test_conformance.py runs the edge
default), then what is particular to Qdrant: id mapping, the payload, index building,
options, and the payload indexes a server is asked for."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("qdrant_edge")
pytest.importorskip("qdrant_client")

from rag.errors import ConfigError, FilterError, LockedError, MetadataError, StoreError
from rag.filters import And, Comparison, Not, Or, evaluate, parse
from rag.store import StoreConfig
from rag.types import Chunk
from vectorstores import qdrant as qmod
from vectorstores import qdrant_engines as engines
from vectorstores.conformance import *  # noqa: F403  (the contract's tests, on local mode)
from vectorstores.conformance import StoreEnv, dataset
from vectorstores.conformance_guards import *  # noqa: F403  (the contract on hostile input)
from vectorstores.qdrant import ID_KEY, TEXT_KEY, QdrantStore, point_id
from vectorstores.qdrant_filters import field_of_path, key_path

ENGINES = ["edge", "local"]


@pytest.fixture(scope="module")
def local_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qdrant-local")


@pytest.fixture
def store_env(local_root: Path) -> StoreEnv:
    return StoreEnv("qdrant", StoreConfig(local_root, options={"engine": "local"}))


def _open(
    tmp_path: Path, engine: str, name: str = "c", dim: int = 16, **options: Any
) -> QdrantStore:
    return QdrantStore(
        name, dim=dim, config=StoreConfig(tmp_path, options={"engine": engine, **options})
    )


def _unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# --- ids and payload -------------------------------------------------------------------------


def test_point_id_mapping() -> None:
    u = str(uuid.uuid4())
    assert point_id(u) == u
    for odd in ["doc.md#3", "", "ünï", u.upper(), "{" + u + "}", u.replace("-", "")]:
        mapped = point_id(odd)
        assert mapped != odd
        assert str(uuid.UUID(mapped)) == mapped
        assert point_id(odd) == mapped  # deterministic
    assert point_id("a") != point_id("b")


@pytest.mark.parametrize("engine", ENGINES)
def test_non_uuid_ids_round_trip(tmp_path: Path, engine: str) -> None:
    ids = ["doc.md#0", "doc.md#1", "ÜBER/straße 2", str(uuid.uuid4()).upper(), "42"]
    chunks = [Chunk(cid, f"text {i}", {"i": i}) for i, cid in enumerate(ids)]
    vecs = _unit(len(ids))
    store = _open(tmp_path, engine)
    try:
        store.upsert(chunks, vecs)
        assert store.get(list(reversed(ids))) == list(reversed(chunks))
        hits = store.search(vecs[2], k=5)
        assert hits[0].id == ids[2] and hits[0].chunk == chunks[2]
        assert {h.id for h in hits} == set(ids)
        seen = [c for batch, _ in store.scan(batch_size=2) for c in batch]
        assert sorted(c.id for c in seen) == sorted(ids)
        store.delete([ids[0], "never-there"])
        assert store.count() == len(ids) - 1
        assert store.get([ids[0]]) == []
        store.upsert([Chunk(ids[1], "again", {})], vecs[1:2])  # same id, same point
        assert store.count() == len(ids) - 1
        assert store.get([ids[1]])[0].text == "again"
    finally:
        store.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_payload_round_trip_keeps_types(tmp_path: Path, engine: str) -> None:
    meta = {
        "i": 1,
        "f": 1.0,
        "b": True,
        "zero": 0,
        "neg": -1.5e-8,
        "big": 2**62,
        "s": "1",
        "u": "日本 ✓",
    }
    chunk = Chunk("odd id", "text", meta)
    store = _open(tmp_path, engine)
    try:
        store.upsert([chunk], _unit(1))
        got = store.get(["odd id"])[0]
        assert got == chunk
        assert [type(v) for v in got.metadata.values()] == [type(v) for v in meta.values()]
        assert TEXT_KEY not in got.metadata and ID_KEY not in got.metadata
        # The payload's own keys cannot be written: the rule allows no ':' in a key.
        with pytest.raises(MetadataError):
            store.upsert([Chunk("x", "t", {TEXT_KEY: "no"})], _unit(1))
        with pytest.raises(MetadataError, match="64-bit"):
            store.upsert([Chunk("x", "t", {"n": 2**64})], _unit(1))
        assert store.count() == 1
    finally:
        store.close()


@pytest.mark.xfail(
    strict=True,
    reason="qdrant-edge 0.9 changes the last digit of some doubles (reported to the lead); "
    "remove this mark when it keeps them",
)
def test_edge_keeps_doubles_exactly(tmp_path: Path) -> None:
    values = [0.9655443552261345, 118311.64033538465, 9.981540654442605e25, 7971297999483900.0]
    chunks = [Chunk(str(uuid.UUID(int=i + 1)), "t", {"f": v}) for i, v in enumerate(values)]
    store = _open(tmp_path, "edge")
    try:
        store.upsert(chunks, _unit(len(chunks)))
        assert store.get([c.id for c in chunks]) == chunks
        for c, v in zip(chunks, values, strict=True):
            assert [h.id for h in store.search(_unit(1)[0], k=5, where={"f": v})] == [c.id]
    finally:
        store.close()


# --- filters: the engines' own quirks ------------------------------------------------------

MIXED = [True, False, 1, 0, 1.0, 2.5, 2, "1", "a", None]
MIXED_CASES = [
    {"v": True},
    {"v": False},
    {"v": 1},
    {"v": 0},
    {"v": 1.0},
    {"v": "1"},
    {"v": 2},
    {"v": {"$ne": 1}},
    {"v": {"$ne": True}},
    {"v": {"$ne": "a"}},
    {"v": {"$in": [1, True]}},
    {"v": {"$in": [False, "a", 2.5]}},
    {"v": {"$nin": [1, "a"]}},
    {"v": {"$nin": [True, False]}},
    {"v": {"$gte": 1}},
    {"v": {"$lt": 1}},
    {"v": {"$gt": 0, "$lte": 2}},
    {"$not": {"v": 1}},
    {"$not": {"v": {"$ne": 1}}},
    {"$or": [{"v": True}, {"v": "a"}]},
]


@pytest.mark.parametrize("engine", ENGINES)
def test_mixed_type_field_matches_reference(tmp_path: Path, engine: str) -> None:
    """One field holding booleans, integers, floats, strings, null, or nothing: booleans
    must not equal 1 (qdrant-edge's MatchValue(True) does), floats must equal integers."""
    chunks = [Chunk(f"id{i}", "t", {} if v is None else {"v": v}) for i, v in enumerate(MIXED)]
    chunks.append(Chunk("null", "t", {"v": None}))  # stored as null: missing to a filter
    store = _open(tmp_path, engine)
    try:
        store.upsert(chunks, _unit(len(chunks)))
        for spec in MIXED_CASES:
            flt = parse(spec)
            expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
            got = {h.id for h in store.search(_unit(1, seed=5)[0], k=50, where=flt)}
            assert got == expected, spec
    finally:
        store.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_hand_built_filters(tmp_path: Path, engine: str) -> None:
    chunks, vecs = dataset(n=20)
    store = _open(tmp_path, engine)
    try:
        store.upsert(chunks, vecs)
        q = vecs[0]
        # empty $and / $or are refused as in the JSON form (their translations differ by
        # engine: Qdrant reads an empty "should" as no constraint)
        for empty in (Or(()), And(()), Not(Or(()))):
            with pytest.raises(FilterError, match="non-empty"):
                store.search(q, k=50, where=empty)
        assert len(store.search(q, k=50, where=Not(Or((Comparison("n", "$lt", 5),))))) == 15
        with pytest.raises(FilterError):
            store.search(q, k=5, where=Comparison("n", "$gt", "ten"))
        with pytest.raises(FilterError):
            store.search(q, k=5, where=Comparison("n", "$like", 1))
        # the JSON form is accepted too
        assert len(store.search(q, k=50, where={"n": {"$lt": 5}})) == 5
    finally:
        store.close()


def test_key_paths() -> None:
    """Keys a bare Qdrant JSON path cannot hold are quoted; both forms read back as the key."""
    for bare in ("source", "content-type", "_x", "page2"):
        assert key_path(bare) == bare
    assert key_path("Header 1") == '"Header 1"'
    assert key_path("título") == '"título"'
    for field in ("source", "Header 1", "título", "content-type"):
        assert field_of_path(key_path(field)) == field
    assert field_of_path("título") == "título"  # as Qdrant reports it: quoted only if needed
    with pytest.raises(FilterError):
        key_path('a"b')


_RULE_KEYS = ("Header 1", "título", "content-type")


def _rule_chunks(n: int = 30) -> list[Chunk]:
    return [
        Chunk(
            str(uuid.UUID(int=i + 1)),
            "t",
            {"Header 1": f"h{i % 3}", "título": i % 2 == 0, "content-type": i},
        )
        for i in range(n)
    ]


_RULE_FILTER = {"Header 1": "h1", "título": True, "content-type": {"$gte": 3}}


@pytest.mark.parametrize("engine", ENGINES)
def test_rule_keys_filter_and_get_payload_indexes(tmp_path: Path, engine: str) -> None:
    chunks = _rule_chunks()
    flt = parse(_RULE_FILTER)
    expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
    declared = {"index_fields": ",".join(_RULE_KEYS)} if engine == "edge" else {}
    store = _open(tmp_path, engine, **declared)
    try:
        store.upsert(chunks, _unit(len(chunks)))
        assert {h.id for h in store.search(_unit(1, seed=3)[0], k=30, where=flt)} == expected
        assert store.get([chunks[4].id]) == [chunks[4]]
        if engine == "edge":
            assert {
                "Header 1": "keyword",
                "título": "bool",
                "content-type": "float",
            }.items() <= store._indexed.items()
    finally:
        store.close()
    again = _open(tmp_path, engine)
    try:
        if engine == "edge":  # read back from the shard by key, not by path
            assert set(_RULE_KEYS) <= set(again._indexed)
        assert {h.id for h in again.search(_unit(1, seed=3)[0], k=30, where=flt)} == expected
    finally:
        again.close()


# --- index building on edge ----------------------------------------------------------------


def _small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    # 16-d vectors are 64 bytes: HNSW for segments past 128 points, a build every 1,000
    # points written, and HNSW (not a scan) for any search expected to match more than 16.
    monkeypatch.setattr(engines, "INDEXING_THRESHOLD_KB", 8)
    monkeypatch.setattr(engines, "AUTO_OPTIMIZE_BYTES", 64 * 1000)
    monkeypatch.setattr(engines, "FULL_SCAN_THRESHOLD_KB", 1)


def _indexed(store: QdrantStore) -> int:
    return store._engine.shard.info().indexed_vectors_count


def test_edge_builds_hnsw_past_threshold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_thresholds(monkeypatch)
    rng = np.random.default_rng(1)
    centroids = rng.normal(size=(20, 16))
    vecs = (centroids[rng.integers(0, 20, 3000)] + 0.3 * rng.normal(size=(3000, 16))).astype(
        np.float32
    )
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [
        Chunk(str(uuid.UUID(int=i + 1)), "t", {"n": i, "page": i % 10, "g": i % 10})
        for i in range(3000)
    ]
    store = _open(tmp_path, "edge")
    try:
        store.upsert(chunks[:900], vecs[:900])
        assert _indexed(store) == 0, "no build before the threshold"
        store.upsert(chunks[900:1100], vecs[900:1100])
        assert _indexed(store) == 1100, "the write that crosses the threshold builds HNSW"
        store.upsert(chunks[1100:], vecs[1100:])
        assert _indexed(store) >= 2000
        assert store.count() == 3000

        overlap = []
        for q in vecs[:30]:
            expected = set(np.argsort(-(vecs @ q))[:10])
            got = {int(uuid.UUID(h.id)) - 1 for h in store.search(q, k=10)}
            overlap.append(len(got & expected) / 10)
        assert np.mean(overlap) >= 0.9

        def top(pred: Any, q: np.ndarray, k: int) -> list[int]:
            match = np.array([i for i in range(3000) if pred(i)])
            return match[np.argsort(-(vecs[match] @ q))[:k]].tolist()

        for qi in range(10):
            q = vecs[qi]
            # selective: answered from the payload index, exactly
            got = [
                int(uuid.UUID(h.id)) - 1
                for h in store.search(q, k=4, where=parse({"n": {"$in": [5, 700, 1500, 2999]}}))
            ]
            assert got == top(lambda i: i in (5, 700, 1500, 2999), q, 4)
            # broad (10%), on a field indexed from the start ("page") or never ("g"):
            # filtered HNSW, which on this small 16-d graph can come back short; the store
            # still returns k matching hits, best first
            for field in ("page", "g"):
                hits = store.search(q, k=4, where=parse({field: 3}))
                assert len(hits) == 4 and all(h.chunk.metadata[field] == 3 for h in hits)
                assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    finally:
        store.close()


def test_edge_build_steps_grow_with_the_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build every 1,000 points while the collection is small, then every half of what the
    # last build covered: a bulk load costs a few builds, not one per 1,000 points.
    _small_thresholds(monkeypatch)
    chunks, vecs = dataset(n=7000)
    store = _open(tmp_path, "edge")
    builds: list[int] = []
    engine = store._engine
    real = engine.optimize

    def counted() -> bool:
        builds.append(engine.shard.info().points_count)
        return real()

    monkeypatch.setattr(engine, "optimize", counted)
    try:
        for start in range(0, 7000, 100):
            store.upsert(chunks[start : start + 100], vecs[start : start + 100])
        assert builds == [1000, 2000, 3000, 4500, 6800]
        assert _indexed(store) == 6800
    finally:
        store.close()
    assert builds[-1] == 7000  # close() builds the rest


def test_edge_filtered_hnsw_keeps_recall(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A filter matching 10% of the points, spread evenly over a clustered graph, searched
    # through HNSW at a small ef: plain filtered traversal loses most of the neighbours
    # (recall@10 about 0.2 here); ACORN keeps them.
    _small_thresholds(monkeypatch)
    monkeypatch.setattr(engines, "AUTO_OPTIMIZE_BYTES", 2**62)
    n, dim = 10_000, 32
    rng = np.random.default_rng(3)
    centroids = rng.normal(size=(50, dim))
    vecs = (centroids[rng.integers(0, 50, n)] + 0.4 * rng.normal(size=(n, dim))).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(str(uuid.UUID(int=i + 1)), "", {"g": i % 10}) for i in range(n)]
    store = _open(tmp_path, "edge", dim=dim, ef_search=10, index_fields="g")
    try:
        store.upsert(chunks, vecs)
        store.optimize()
        assert _indexed(store) == n
        match = np.flatnonzero(np.arange(n) % 10 == 3)
        for where, least in (
            ({"g": 3}, 0.9),  # g's payload index: filtered HNSW with ACORN
            ({"g": {"$in": [3, "x"]}}, 1.0),  # no fitting index (a string operand): exact
        ):
            recall = []
            for q in vecs[-50:]:
                expected = set(match[np.argsort(-(vecs[match] @ q))[:10]].tolist())
                got = {int(uuid.UUID(h.id)) - 1 for h in store.search(q, k=10, where=where)}
                recall.append(len(got & expected) / 10)
            assert np.mean(recall) >= least, where
    finally:
        store.close()


def test_edge_close_builds_what_is_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _small_thresholds(monkeypatch)
    chunks, vecs = dataset(n=500)
    store = _open(tmp_path, "edge")
    store.upsert(chunks, vecs)
    assert _indexed(store) == 0
    store.close()
    store = _open(tmp_path, "edge")
    try:
        assert _indexed(store) == 500
        assert store.optimize() is False  # nothing left to do
        assert store.search(vecs[3], k=1)[0].id == chunks[3].id
    finally:
        store.close()


# --- options and opening -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        (None, {"bogus": 1}, "unknown option"),
        (None, {"engine": "cloud"}, "choose edge, local or server"),
        ("http://localhost:6333", {"engine": "edge"}, "server URL is set"),
        ("http://localhost:6333", {"engine": "local"}, "server URL is set"),
        (None, {"engine": "server"}, "needs the server's URL"),
        (None, {"engine": "local", "hnsw_m": 32}, "no HNSW options"),
        (None, {"engine": "local", "index_fields": "a"}, "no payload indexes"),
        (None, {"index_fields": "a.b"}, "index_fields: metadata key"),
        (None, {"index_fields": "a:int"}, "the type is one of"),
        (None, {"hnsw_m": "many"}, "not a int"),
        (None, {"hnsw_m": 1}, "hnsw_m >= 2"),
        (None, {"ef_search": -1}, "ef_search >= 0"),
        (None, {"exact": "maybe"}, "not a bool"),
    ],
)
def test_bad_options(tmp_path: Path, url: str | None, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        QdrantStore("c", dim=4, config=StoreConfig(tmp_path, url=url, options=options))


def test_capabilities_per_engine(tmp_path: Path) -> None:
    assert QdrantStore.capabilities.exact_search is False
    for n, (options, exact) in enumerate(
        (({}, False), ({"engine": "local"}, True), ({"exact": "true"}, True))
    ):
        store = QdrantStore(f"c{n}", dim=4, config=StoreConfig(tmp_path, options=options))
        try:
            assert store.capabilities.exact_search is exact
            assert store.engine == options.get("engine", "edge")
        finally:
            store.close()


def test_edge_options_are_applied_and_checked(tmp_path: Path) -> None:
    chunks, vecs = dataset(n=30)
    store = _open(tmp_path, "edge", hnsw_m=8, ef_construction=64, ef_search=32)
    store.upsert(chunks, vecs)
    store.close()
    with pytest.raises(ConfigError, match="hnsw_m=8"):
        _open(tmp_path, "edge", hnsw_m=16)
    reopened = _open(
        tmp_path, "edge", hnsw_m=8, exact=True
    )  # same build options, any search options
    try:
        assert reopened.search(vecs[4], k=1)[0].id == chunks[4].id
    finally:
        reopened.close()


def test_engine_of_existing_folder_is_checked(tmp_path: Path) -> None:
    _open(tmp_path, "local", name="loc").close()
    _open(tmp_path, "edge", name="edg").close()
    with pytest.raises(ConfigError, match="engine=local"):
        _open(tmp_path, "edge", name="loc")
    with pytest.raises(ConfigError, match="engine=edge"):
        _open(tmp_path, "local", name="edg")


@pytest.mark.parametrize("engine", ENGINES)
def test_second_handle_is_locked_out(tmp_path: Path, engine: str) -> None:
    store = _open(tmp_path, engine)
    try:
        with pytest.raises(LockedError):
            _open(tmp_path, engine)
    finally:
        store.close()
    _open(tmp_path, engine).close()  # free again once closed


@pytest.mark.parametrize("engine", ENGINES)
def test_closed_store_raises(tmp_path: Path, engine: str) -> None:
    store = _open(tmp_path, engine)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.count()


def test_bad_collection_name(tmp_path: Path) -> None:
    for name in ("", "..", "a/b", "x\n", "../x"):
        for url in (None, "http://qdrant.invalid:6333"):  # a server's names follow the rule too
            with pytest.raises(ConfigError, match="collection name"):
                QdrantStore(name, dim=4, config=StoreConfig(tmp_path, url=url))
    assert not list(tmp_path.parent.glob("x"))


# --- searches never write ----------------------------------------------------------------


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_filtered_search_leaves_the_store_unchanged(tmp_path: Path) -> None:
    """A filtered search on fields without a payload index makes none: the shard's files
    and index list stay as they were, and the result is the reference's."""
    chunks, vecs = dataset(n=60)
    store = _open(tmp_path, "edge")
    store.upsert(chunks, vecs)
    store.close()
    store = _open(tmp_path, "edge")  # reopened: nothing pending from the writes
    try:
        indexes = dict(store._indexed)
        assert "tag" not in indexes and "x" not in indexes
        before = _files(tmp_path / "c")
        for spec in (
            {"tag": "a"},
            {"x": {"$lt": 0.5}, "even": True},
            {"$or": [{"tag": {"$in": ["b", "ç"]}}, {"opt": {"$ne": "yes"}}]},
        ):
            flt = parse(spec)
            expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
            hits = store.search(vecs[0], k=len(chunks), where=flt)
            assert {h.id for h in hits} == expected
            assert len(hits) == len(expected)
        assert _files(tmp_path / "c") == before
        assert store._engine.shard.info().payload_schema.keys() == {
            f'"{k}"' if " " in k else k for k in indexes
        }
        assert store._indexed == indexes
    finally:
        store.close()


def test_declared_index_fields_are_made_by_writes(tmp_path: Path) -> None:
    chunks, vecs = dataset(n=20)
    store = _open(tmp_path, "edge", index_fields="tag, x, even, flag:float, absent")
    try:
        assert "tag" not in store._indexed  # nothing written yet
        store.upsert(chunks, vecs)
        expected = {"tag": "keyword", "x": "float", "even": "bool", "flag": "float"}
        assert expected.items() <= store._indexed.items()
        assert "absent" not in store._indexed  # made by the first write that carries it
        flt = parse({"tag": "a", "x": {"$gte": 0.1}})
        hits = store.search(vecs[0], k=20, where=flt)
        assert {h.id for h in hits} == {c.id for c in chunks if evaluate(flt, c.metadata)}
    finally:
        store.close()
    again = _open(tmp_path, "edge")  # read back from the shard
    try:
        assert {k: again._indexed[k] for k in expected} == expected
    finally:
        again.close()


def test_local_mode_size_warning_is_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(engines, "LOCAL_MODE_ADVISED_MAX", 10)
    chunks, vecs = dataset(n=30)
    store = _open(tmp_path, "local")
    try:
        with caplog.at_level("WARNING", logger="vectorstores.qdrant"):
            store.upsert(chunks[:8], vecs[:8])
            assert not caplog.records
            store.upsert(chunks[8:], vecs[8:])
            store.upsert(chunks, vecs)
        assert len(caplog.records) == 1
        assert "local mode" in caplog.records[0].getMessage()
    finally:
        store.close()


# --- server mode: the same client code, with the calls a server would get recorded ------------


class RecordingClient:
    """Stands in for a server: a real local-mode client underneath (so everything works),
    every call recorded, and payload indexes remembered as a server would report them."""

    def __init__(self, path: Path) -> None:
        from qdrant_client import QdrantClient

        self.inner = QdrantClient(path=str(path))
        self.calls: list[tuple[str, tuple, dict]] = []
        self.schema: dict[str, dict[str, str]] = {}
        self.hnsw: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, args, kwargs))
            return target(*args, **kwargs)

        return call

    def create_payload_index(
        self, collection_name: str, *, field_name: str, field_schema: Any, wait: bool
    ) -> None:
        self.calls.append(
            (
                "create_payload_index",
                (collection_name,),
                {"field_name": field_name, "field_schema": field_schema},
            )
        )
        self.schema.setdefault(collection_name, {})[field_name] = field_schema.type.value

    def create_collection(self, collection_name: str, **kwargs: Any) -> Any:
        self.calls.append(("create_collection", (collection_name,), kwargs))
        self.hnsw[collection_name] = kwargs.get("hnsw_config")
        return self.inner.create_collection(collection_name, **kwargs)

    def get_collection(self, collection_name: str) -> Any:
        # Local mode keeps neither payload indexes nor HNSW settings; a server reports both.
        from qdrant_client import models

        info = self.inner.get_collection(collection_name)
        schema = {
            f: models.PayloadIndexInfo(data_type=models.PayloadSchemaType(t), points=0)
            for f, t in self.schema.get(collection_name, {}).items()
        }
        hnsw = info.config.hnsw_config
        given = self.hnsw.get(collection_name)
        if given is not None:
            hnsw = hnsw.model_copy(
                update={k: v for k, v in given.model_dump().items() if v is not None}
            )
        config = info.config.model_copy(update={"hnsw_config": hnsw})
        return info.model_copy(update={"payload_schema": schema, "config": config})

    def index_calls(self) -> list[tuple[str, str]]:
        out = []
        for name, _, kw in self.calls:
            if name == "create_payload_index":
                assert kw["field_schema"].enable_hnsw is False
                out.append((kw["field_name"], kw["field_schema"].type.value))
        return out

    def close(self) -> None:
        pass  # the "server" outlives each store; closed by the test


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RecordingClient:
    client = RecordingClient(tmp_path / "server")
    monkeypatch.setattr(qmod, "connect_server", lambda url: client)
    yield client
    client.inner.close()


def _server_store(
    tmp_path: Path, name: str = "srv", create: bool = True, **options: Any
) -> QdrantStore:
    config = StoreConfig(tmp_path, url="http://qdrant.invalid:6333", options=options)
    return QdrantStore(name, dim=16, config=config, create=create)


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_payload_indexes(tmp_path: Path, server: RecordingClient) -> None:
    store = _server_store(tmp_path, hnsw_m=24, index_fields="tag,even,x,flag,mixed")
    assert store.engine == "server" and store.path is None
    assert server.index_calls() == [
        ("source", "keyword"),
        ("file_type", "keyword"),
        ("page", "float"),
        ("mtime", "float"),
    ]
    created = next(kw for name, _, kw in server.calls if name == "create_collection")
    assert created["hnsw_config"].m == 24 and created["vectors_config"].size == 16
    chunks, vecs = dataset(n=40)
    server.calls.clear()
    store.upsert(chunks, vecs)  # the write makes the declared indexes ("mixed" is absent)
    assert sorted(server.index_calls()) == [
        ("even", "bool"),
        ("flag", "float"),
        ("tag", "keyword"),
        ("x", "float"),
    ]
    server.calls.clear()
    flt = parse(
        {
            "tag": {"$in": ["a", "b"]},
            "even": True,
            "x": {"$lt": 0.5},
            "source": "/docs/file1.md",
            "$or": [{"flag": 1}, {"flag": {"$gt": 1.5}}],
        }
    )
    unindexed = parse({"tag": "a", "mixed": {"$in": ["a", 1]}, "opt": "yes"})
    for where, exact in ((flt, False), (unindexed, True)):
        server.calls.clear()
        hits = store.search(vecs[0], k=40, where=where)
        assert {h.id for h in hits} == {c.id for c in chunks if evaluate(where, c.metadata)}
        assert server.index_calls() == []  # searches never make one
        search = next(kw for name, _, kw in server.calls if name == "query_points")
        assert search["search_params"].exact is exact  # without the indexes: exact
    server.calls.clear()
    store.upsert(chunks[:3], vecs[:3])
    assert server.index_calls() == []  # indexed once
    store.close()

    again = _server_store(tmp_path, create=False, index_fields="tag")  # read back, not made
    try:
        again.upsert(chunks[:3], vecs[:3])
        again.search(vecs[0], k=5, where=parse({"tag": "a", "page": 2}))
        assert server.index_calls() == []
        assert again.count() == 40
    finally:
        again.close()
    with pytest.raises(ConfigError, match="hnsw_m=24"):
        _server_store(tmp_path, hnsw_m=16)


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_indexes_rule_keys_by_quoted_path(tmp_path: Path, server: RecordingClient) -> None:
    store = _server_store(tmp_path, name="keys", index_fields=",".join(_RULE_KEYS))
    chunks = _rule_chunks()
    server.calls.clear()
    store.upsert(chunks, _unit(len(chunks)))
    assert sorted(server.index_calls()) == [
        ('"Header 1"', "keyword"),
        ('"título"', "bool"),
        ("content-type", "float"),
    ]
    flt = parse(_RULE_FILTER)
    hits = store.search(_unit(1, seed=3)[0], k=30, where=flt)
    assert {h.id for h in hits} == {c.id for c in chunks if evaluate(flt, c.metadata)}
    store.close()
    again = _server_store(tmp_path, name="keys", create=False, index_fields=",".join(_RULE_KEYS))
    try:
        server.calls.clear()
        again.upsert(chunks[:2], _unit(2))
        assert server.index_calls() == []  # the server's paths are read back as keys
    finally:
        again.close()


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_missing_collection_and_drop(tmp_path: Path, server: RecordingClient) -> None:
    from rag.errors import CollectionNotFoundError

    with pytest.raises(CollectionNotFoundError, match="server"):
        _server_store(tmp_path, name="nope", create=False)
    store = _server_store(tmp_path, name="gone")
    store.drop()
    assert ("delete_collection", ("gone",), {}) in server.calls
    with pytest.raises(CollectionNotFoundError):
        _server_store(tmp_path, name="gone", create=False)


@pytest.mark.filterwarnings("ignore:Local mode performs exact")
def test_server_refusing_an_index_still_writes_and_filters(
    tmp_path: Path,
    server: RecordingClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _server_store(tmp_path, index_fields="tag")
    chunks, vecs = dataset(n=30)

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("403 Forbidden: read-only API key")

    monkeypatch.setattr(server, "create_payload_index", refuse)
    flt = parse({"tag": "a"})
    try:
        with caplog.at_level("WARNING", logger="vectorstores.qdrant"):
            for _ in range(2):
                store.upsert(chunks, vecs)
                hits = store.search(vecs[0], k=30, where=flt)
                assert {h.id for h in hits} == {c.id for c in chunks if evaluate(flt, c.metadata)}
        assert len(caplog.records) == 1 and "read-only" in caplog.records[0].getMessage()
        assert store.count() == 30
    finally:
        store.close()


def test_server_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import qdrant_client

    seen: list[dict] = []

    class FakeClient:
        def __init__(self, **kwargs: Any) -> None:
            seen.append(kwargs)

    monkeypatch.setattr(qdrant_client, "QdrantClient", FakeClient)
    monkeypatch.setenv("QDRANT_API_KEY", "s3cret")
    qmod.connect_server("https://qdrant.example:6333")
    monkeypatch.delenv("QDRANT_API_KEY")
    qmod.connect_server("http://localhost:6333")
    assert seen == [
        {"url": "https://qdrant.example:6333", "api_key": "s3cret"},
        {"url": "http://localhost:6333", "api_key": None},
    ]
