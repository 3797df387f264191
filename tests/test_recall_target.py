"""A recall target instead of index knobs: the store chooses its index and search parameter
from recall measured on the collection's own vectors, the collection records the choice, and
later opens (queries) use it unless an option is named over it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.collection import open_collection
from rag.config import Settings
from rag.errors import CapabilityError, ConfigError
from rag.filters import ALL_OPS
from rag.store import Calibration, Capabilities, StoreBase, StoreConfig, calibrate
from rag.types import Chunk
from tests.source_support import write_topic_corpus
from vectorstores import calibration
from vectorstores.faiss import FaissStore

ROOT = Path(__file__).resolve().parent.parent
RAG = [sys.executable, "-m", "apps.cli"]
N, DIM = 4000, 32


def clustered(n: int = N, dim: int = DIM, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    x = centres[rng.integers(0, 40, n)] + 0.6 * rng.normal(size=(n, dim))
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def faiss_store(folder: Path, vectors: np.ndarray, **options: Any) -> FaissStore:
    store = FaissStore("c", dim=vectors.shape[1], config=StoreConfig(folder, options=options))
    if store.count() == 0:
        store.upsert([Chunk(f"id{i}", "t", {}) for i in range(len(vectors))], vectors)
    return store


def leave_one_out_recall(
    store: FaissStore, vectors: np.ndarray, queries: int | None = None, k: int = 10
) -> float:
    """recall@k of the store's search with each of the first ``queries`` vectors (all by
    default) as a query, its own left out, against numpy's exact ranking: independent of
    the calibration's own measurement."""
    q = vectors[:queries]
    scores = q @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    exact = np.argsort(-scores, axis=1)[:, :k]
    found = store.search_many(q, k=k + 1)
    total = 0
    for i, hits in enumerate(found):
        got = [int(h.id[2:]) for h in hits if h.id != f"id{i}"][:k]
        total += len(set(got) & set(exact[i].tolist()))
    return total / (k * len(q))


# --- the FAISS store's calibration ---------------------------------------------------------------


def test_below_ann_min_the_exact_index_meets_any_target(tmp_path: Path) -> None:
    store = faiss_store(tmp_path, clustered())
    cal = calibrate(store, 0.99)
    assert cal.options == {"index": "flat"}
    assert (cal.recall, cal.queries, cal.count) == (1.0, 0, N)
    assert "below 50000 chunks" in cal.note
    assert store.capabilities.exact_search
    store.close()


def test_ivf_gets_the_smallest_nprobe_that_reaches_the_target(tmp_path: Path) -> None:
    vectors = clustered()
    store = faiss_store(tmp_path, vectors, ann_min=1000)
    cal = calibrate(store, 0.95)
    nprobe = cal.options["nprobe"]
    assert cal.options == {"index": "ivf", "nlist": 102, "nprobe": nprobe}  # min(4√N, N/39)
    assert cal.recall >= 0.95 and cal.queries == 500
    assert isinstance(store._index, store._faiss.IndexIVFFlat)
    assert not store.capabilities.exact_search
    # Measured independently, over every vector: the recall the choice was made for.
    assert leave_one_out_recall(store, vectors) == pytest.approx(cal.recall, abs=0.02)
    expected = [[h.id for h in hits] for hits in store.search_many(vectors[:50], k=10)]
    # The next smaller nprobe of the ladder does not reach it (measured as a named option).
    smaller = max(v for v in (1, 2, 3, 4, 6, 8, 12, 16, 24) if v < nprobe)
    at_smaller = calibrate(store, 0.95, fixed={"nprobe": str(smaller)})
    # Short of the target with 95% confidence: its mean may pass it by less than the margin.
    assert at_smaller.recall < 0.97 and at_smaller.options == {"index": "ivf", "nlist": 102}
    assert store._opts["nprobe"] == smaller
    store.close()

    # Opened with the options it chose, the store is that index again (from its snapshot).
    again = faiss_store(tmp_path, vectors, **cal.options)
    assert isinstance(again._index, again._faiss.IndexIVFFlat)
    assert again._opts["nprobe"] == nprobe
    assert [[h.id for h in hits] for hits in again.search_many(vectors[:50], k=10)] == expected
    again.close()


def test_a_choice_needs_the_target_within_its_confidence_bound() -> None:
    # 200 queries: 190 find all ten neighbours, 10 find half: mean 0.975, bound 0.962.
    qids = np.arange(200)
    truth = np.arange(2000).reshape(200, 10) + 1000
    found = [
        [q, *t] if q >= 10 else [q, *t[:5], -1, -2, -3, -4, -5]
        for q, t in zip(qids, truth, strict=True)
    ]
    got = calibration.recall(found, qids, truth)
    assert got.mean == pytest.approx(0.975)
    assert got.low == pytest.approx(
        0.975 - 1.645 * np.std([1.0] * 190 + [0.5] * 10, ddof=1) / np.sqrt(200)
    )
    assert (
        calibration.recall([[q, *t] for q, t in zip(qids, truth, strict=True)], qids, truth).low
        == 1.0
    )
    # A mean at the target is not enough; the first value whose bound reaches it is chosen.
    measured = {1: calibration.Recall(0.90, 0.88), 2: calibration.Recall(0.955, 0.945),
                3: calibration.Recall(0.97, 0.96), 4: calibration.Recall(0.99, 0.985)}  # fmt: skip
    assert calibration.smallest_reaching([1, 2, 3, 4], measured.__getitem__, 0.95) == (
        3,
        0.97,
        True,
    )
    assert calibration.smallest_reaching([1, 2], measured.__getitem__, 0.95) == (2, 0.955, False)


def test_named_options_are_kept_and_measured(tmp_path: Path) -> None:
    vectors = clustered(1500)
    store = faiss_store(tmp_path, vectors, index="hnsw", hnsw_m=8)
    cal = calibrate(store, 0.9, fixed={"index": "hnsw", "hnsw_m": 8})
    ef = cal.options["ef_search"]
    assert set(cal.options) == {"ef_search"} and cal.recall >= 0.9
    assert store._opts["ef_search"] == ef and cal.fixed == {"index": "hnsw", "hnsw_m": 8}

    # A named ef_search is measured, not changed; the recall reported is the one it gives.
    cal = calibrate(store, 0.9, fixed={"index": "hnsw", "ef_search": 10})
    assert cal.options == {} and store._opts["ef_search"] == 10
    assert "ef_search=10 named" in cal.note
    assert leave_one_out_recall(store, vectors) == pytest.approx(cal.recall, abs=0.03)
    store.close()


def test_a_target_no_setting_reaches_keeps_the_exact_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)  # isotropic: IVF's lists do not hold the neighbours
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    store = faiss_store(tmp_path, vectors, ann_min=1000)
    cal = calibrate(store, 0.999)
    assert cal.options == {"index": "flat"} and cal.recall == 1.0
    assert cal.queries == 500 and cal.note.startswith("ivf reached")
    assert store.capabilities.exact_search and not isinstance(store._index, store._faiss.IndexIVF)
    assert leave_one_out_recall(store, vectors, 300) == 1.0
    store.close()


class _Plain(StoreBase):
    name = "plain"
    capabilities = Capabilities(filter_ops=ALL_OPS, exact_search=True)


def test_a_store_that_cannot_calibrate_says_so() -> None:
    with pytest.raises(CapabilityError, match="the plain store cannot choose its index"):
        calibrate(_Plain(), 0.9)  # type: ignore[arg-type]
    with pytest.raises(CapabilityError, match="--store-opt"):
        _Plain().calibrate(0.9)
    for target in (0.0, 1.5):
        with pytest.raises(ConfigError, match="recall target"):
            calibrate(_Plain(), target)  # type: ignore[arg-type]


def test_a_measured_choice_is_kept_while_it_fits() -> None:
    cal = Calibration(0.95, {"index": "ivf"}, 0.96, queries=500, count=100_000, fixed={"a": 1})
    assert cal.still_fits(0.95, 120_000, {"a": 1})
    assert not cal.still_fits(0.95, 130_000, {"a": 1})  # grew past a quarter
    assert not cal.still_fits(0.95, 70_000, {"a": 1})
    assert not cal.still_fits(0.9, 100_000, {"a": 1})  # another target
    assert not cal.still_fits(0.95, 100_000, {})  # other named options
    exact = Calibration(0.95, {"index": "flat"}, 1.0, queries=0, count=100_000)
    assert not exact.still_fits(0.95, 100_000, {})  # not measured: checked every time
    assert Calibration.from_json(json.loads(json.dumps(cal.to_json()))) == cal


def test_the_recall_setting_is_checked_and_read_from_the_environment() -> None:
    assert Settings.from_env({"RAG_RECALL": "0.9"}).recall == 0.9
    assert Settings().recall is None
    for bad in (0.0, 1.01):
        with pytest.raises(ConfigError, match="recall target"):
            Settings(recall=bad)


# --- the collection records the choice and opens its store with it ---------------------------


def settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(data_dir=data_dir, embed_model="hashing-64", embed_backend="hashing", **kw)


@pytest.fixture
def topic_corpus(tmp_path: Path) -> Path:
    """3,000 short paragraphs on 40 topics of 30 words, two to a 16-token chunk (fixed seed)."""
    return write_topic_corpus(tmp_path / "corpus")


def manifest(data_dir: Path) -> dict[str, Any]:
    return json.loads(next(data_dir.rglob("manifest.json")).read_text())


def test_a_collection_built_with_recall_records_its_choice_and_queries_use_it(
    tmp_path: Path, topic_corpus: Path
) -> None:
    d = tmp_path / "rag"
    build = settings(d, chunk_size=16, chunk_overlap=0, store_options={"ann_min": 500})
    with open_collection(build.with_(recall=0.5), create=True) as col:
        col.ingest([topic_corpus])
        assert col.store.count() == 1500
        expected = [h.id for h in col.search("w3x1 w3x2 w3x7", k=10)]
    cal = manifest(d)["calibration"]
    nprobe = cal["options"]["nprobe"]
    assert cal["options"] == {"index": "ivf", "nlist": 38, "nprobe": nprobe}
    assert cal["target"] == 0.5 and cal["recall"] >= 0.5 and cal["count"] == 1500
    assert cal["fixed"] == {"ann_min": 500}
    assert manifest(d)["store_options"] == {"ann_min": 500}  # the named ones, apart

    # A later open, with no store option or target named, uses the choice.
    with open_collection(settings(d)) as col:
        assert col.calibration is not None and col.calibration.options == cal["options"]
        assert col.status()["calibration"] == cal
        store = col.store
        assert isinstance(store._index, store._faiss.IndexIVF)
        assert (store._opts["index"], store._opts["nlist"], store._opts["nprobe"]) == (
            "ivf",
            38,
            nprobe,
        )
        assert [h.id for h in col.search("w3x1 w3x2 w3x7", k=10)] == expected
    # A named option overrides the choice for that open, and is not saved by it.
    with open_collection(settings(d, store_options={"nprobe": 38})) as col:
        assert col.store._opts["nprobe"] == 38
        col.search("w3x1", k=3)
    assert manifest(d)["calibration"] == cal

    # An ingest that changes nothing keeps a choice that fits; a new target is measured.
    with open_collection(settings(d)) as col:
        col.ingest([topic_corpus])
    assert manifest(d)["calibration"] == cal
    with open_collection(settings(d, recall=1.0)) as col:
        col.ingest([topic_corpus])
        assert col.store.capabilities.exact_search
    cal = manifest(d)["calibration"]
    assert cal["target"] == 1.0 and cal["options"] == {"index": "flat"}
    with open_collection(settings(d)) as col:
        assert col.store._opts["index"] == "flat"


def test_the_default_target_tunes_a_named_index(tmp_path: Path) -> None:
    with open_collection(settings(tmp_path, store_options={"index": "hnsw"}), create=True) as col:
        col.ingest([ROOT / "data"])
    cal = manifest(tmp_path)["calibration"]
    assert cal["target"] == 0.95 and set(cal["options"]) == {"ef_search"}
    assert cal["fixed"] == {"index": "hnsw"} and cal["recall"] >= 0.95
    with open_collection(settings(tmp_path)) as col:
        assert col.store._opts["ef_search"] == cal["options"]["ef_search"]


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RAG, *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
    )


def test_the_cli_takes_recall_and_status_reports_the_choice(hashing_env: dict[str, str]) -> None:
    out = run("ingest", "data", "--recall", "0.9", "--store", "chroma", "--quiet", env=hashing_env)
    assert out.returncode == 1
    assert "the chroma store cannot choose its index from a recall target" in out.stderr
    assert not (Path(hashing_env["RAG_DATA_DIR"]) / "collections" / "chroma").exists()

    out = run("ingest", "data", "--recall", "0.9", "--quiet", env=hashing_env)
    assert out.returncode == 0, out.stderr
    out = run("status", "--json", env=hashing_env)
    cal = json.loads(out.stdout)["calibration"]
    assert cal["target"] == 0.9 and cal["options"] == {"index": "flat"}
    out = run("status", env=hashing_env)
    assert out.returncode == 0, out.stderr
    assert "index       index=flat for recall 0.9 at " in out.stdout
    assert "exact (below 50000 chunks: exact" in out.stdout
    out = run("status", "--store-opt", "ef_search=20", env=hashing_env)
    assert "named over it: ef_search=20" in out.stdout
