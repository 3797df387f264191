"""The vector-store benchmark: its metrics, datasets, resume logic, advice, and a quick run."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import numpy as np
import pytest

from eval import bench, bench_data
from eval.bench_advise import advise, predict_recall
from eval.bench_metrics import find_cliffs, fit_power, mean_recall, percentiles, recall_at_k
from eval.bench_report import detect, write_report
from eval.bench_stores import SPECS, faiss_nlist, pg_hnsw_graph_bytes, select

# --- recall ----------------------------------------------------------------------------------


def test_recall_exact_and_partial() -> None:
    truth = [1, 2, 3, 4]
    assert recall_at_k([1, 2, 3, 4], truth, 4) == 1.0
    assert recall_at_k([4, 3, 2, 1], truth, 4) == 1.0  # order does not matter
    assert recall_at_k([1, 2, 9, 8], truth, 4) == 0.5
    assert recall_at_k([9, 8, 7, 6], truth, 4) == 0.0


def test_recall_fewer_results_than_k_counts_misses() -> None:
    assert recall_at_k([1, 2], [1, 2, 3, 4], 4) == 0.5
    assert recall_at_k([], [1, 2, 3, 4], 4) == 0.0


def test_recall_duplicates_count_once() -> None:
    assert recall_at_k([1, 1, 1, 1], [1, 2, 3, 4], 4) == 0.25


def test_recall_small_truth_uses_what_exists() -> None:
    # A filter matching two rows: the truth is padded with -1; finding both is recall 1.
    assert recall_at_k([5, 6], [5, 6, -1, -1], 10) == 1.0
    assert recall_at_k([5], [5, 6, -1, -1], 10) == 0.5
    assert recall_at_k([], [-1, -1], 10) == 1.0  # nothing to find


def test_recall_ties_at_the_kth_distance() -> None:
    truth = [1, 2, 3]
    truth_scores = [0.9, 0.8, 0.7]
    # Row 9 is not in the true top 3 but scores exactly like the 3rd: a tie, a hit.
    assert (
        recall_at_k([1, 2, 9], truth, 3, found_scores=[0.9, 0.8, 0.7], truth_scores=truth_scores)
        == 1.0
    )
    # Row 9 scoring below the 3rd is a miss; without scores ties cannot be seen.
    assert recall_at_k(
        [1, 2, 9], truth, 3, found_scores=[0.9, 0.8, 0.69], truth_scores=truth_scores
    ) == pytest.approx(2 / 3)
    assert recall_at_k([1, 2, 9], truth, 3) == pytest.approx(2 / 3)


def test_recall_only_first_k_found_count() -> None:
    assert recall_at_k([9, 8, 1, 2], [1, 2], 2) == 0.0


def test_mean_recall() -> None:
    truth = np.array([[1, 2], [3, 4]])
    assert mean_recall([[1, 2], [3, 9]], truth, 2) == pytest.approx(0.75)
    assert math.isnan(mean_recall([], truth, 2))


# --- percentiles -------------------------------------------------------------------------------


def test_percentiles_linear_interpolation() -> None:
    p = percentiles(range(1, 101))
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert percentiles([7.0]) == {"p50": 7.0, "p95": 7.0, "p99": 7.0}
    assert all(math.isnan(v) for v in percentiles([]).values())


# --- cliffs -----------------------------------------------------------------------------------


def test_cliffs_linear_series_has_none() -> None:
    pts = [(10_000, 10.0), (100_000, 100.0), (1_000_000, 1_050.0)]
    assert find_cliffs(pts, metric="build", exponent=1.0) == []


def test_cliffs_detects_jump_against_expected_scaling() -> None:
    # Linear up to 500k, then x8 per vector between 500k and 1M.
    pts = [(100_000, 20.0), (250_000, 50.0), (500_000, 100.0), (1_000_000, 1_600.0)]
    found = find_cliffs(pts, metric="build", exponent=1.0)
    assert [(c.n1, c.n2) for c in found] == [(500_000, 1_000_000)]
    assert found[0].observed == pytest.approx(16.0)
    assert found[0].excess == pytest.approx(8.0)


def test_cliffs_flat_expectation_for_hnsw_latency() -> None:
    pts = [(10_000, 0.3), (100_000, 0.35), (1_000_000, 1.2)]
    found = find_cliffs(pts, metric="p50", exponent=0.0)
    assert [(c.n1, c.n2) for c in found] == [(100_000, 1_000_000)]
    # Under the floor (timer noise) nothing is judged; missing values are ignored.
    assert find_cliffs([(1, 0.01), (2, 0.05)], metric="x", exponent=0.0, floor=0.1) == []
    assert find_cliffs([(1, None), (2, 5.0), (4, float("nan"))], metric="x", exponent=0.0) == []


def test_fit_power() -> None:
    a, b = fit_power([(10, 20.0), (100, 200.0), (1000, 2000.0)])
    assert b == pytest.approx(1.0)
    assert a == pytest.approx(2.0)


# --- datasets ---------------------------------------------------------------------------------


def test_synthetic_generator_is_deterministic_and_normalised() -> None:
    a = bench_data.synthetic_block(0, 25_000, dim=32, clusters=25, seed=3)
    b = bench_data.synthetic_block(0, 25_000, dim=32, clusters=25, seed=3)
    assert np.array_equal(a, b)
    # Any row range gives the same rows, across generation blocks.
    part = bench_data.synthetic_block(9_990, 20, dim=32, clusters=25, seed=3)
    assert np.array_equal(part, a[9_990:10_010])
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    other = bench_data.synthetic_block(0, 100, dim=32, clusters=25, seed=4)
    assert not np.allclose(other, a[:100])
    queries = bench_data.synthetic_block(0, 100, dim=32, clusters=25, seed=3, stream=1)
    assert not np.allclose(queries, a[:100])


def test_synthetic_is_clustered() -> None:
    x = bench_data.synthetic_block(0, 4_000, dim=64, clusters=4, seed=1)
    q = bench_data.synthetic_block(0, 50, dim=64, clusters=4, seed=1, stream=1)
    # Nearest neighbours are far closer than random pairs: the data is not uniform.
    top = np.sort(q @ x.T, axis=1)[:, -10:].mean()
    rand = (q @ x[:200].T).mean()
    assert top > rand + 0.3


def test_exact_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    qs = base[:5] * 0.9 + rng.standard_normal((5, 16)).astype(np.float32) * 0.1
    ids, scores = bench_data.exact_knn(base, qs, 10)
    brute = np.argsort(-(qs @ base.T), axis=1)[:, :10]
    assert np.array_equal(ids, brute)
    assert np.allclose(scores, np.take_along_axis(qs @ base.T, brute, axis=1), atol=1e-5)
    subset = np.arange(7, 500, 100)  # 5 rows: fewer than k
    ids, scores = bench_data.exact_knn(base, qs, 10, subset=subset)
    assert set(ids[0][:5]) == set(subset) and (ids[0][5:] == -1).all()


def test_prepare_caches_synthetic(tmp_path: Path) -> None:
    ds = bench_data.prepare(
        "synthetic", 3_000, dim=16, cache_dir=tmp_path, queries=20, log=lambda m: None
    )
    assert ds.base().shape == (3_000, 16)
    ids, _ = ds.truth("all")
    f1, _ = ds.truth("1%")
    assert ids.shape == (20, bench_data.GT_K)
    assert (f1[f1 >= 0] % 100 == 7).all()
    again = bench_data.prepare(
        "synthetic", 3_000, dim=16, cache_dir=tmp_path, queries=20, log=lambda m: None
    )
    assert again.folder == ds.folder and again.info == ds.info
    batches = list(ds.iter_base(1_000))
    assert [s for s, _ in batches] == [0, 1_000, 2_000]
    assert np.array_equal(np.vstack([v for _, v in batches]), ds.base())


def test_filtered_recall_gives_no_credit_for_ignoring_the_filter(tmp_path: Path) -> None:
    from eval.bench_worker import score_found

    ds = bench_data.prepare(
        "synthetic", 3_000, dim=16, cache_dir=tmp_path, queries=20, log=lambda m: None
    )
    queries = np.asarray(ds.queries())
    all_ids, _ = ds.truth("all")
    f_ids, f_scores = ds.truth("1%")
    keep = bench_data.FILTERS["1%"][1]
    # A store that ignored the filter returns the unfiltered top 10: rows outside the
    # filter, all scoring above the filtered 10th, which the tie rule alone would accept.
    ignored = [list(map(int, row[:10])) for row in all_ids]
    unfair = score_found(ds, queries, ignored)
    assert mean_recall(ignored, f_ids, 10, found_scores=unfair, truth_scores=f_scores) > 0.9
    fair = score_found(ds, queries, ignored, keep)
    assert mean_recall(ignored, f_ids, 10, found_scores=fair, truth_scores=f_scores) < 0.2
    # The filtered exact answer itself scores 1.0 either way.
    honest = [[int(r) for r in row[:10] if r >= 0] for row in f_ids]
    scores = score_found(ds, queries, honest, keep)
    assert mean_recall(honest, f_ids, 10, found_scores=scores, truth_scores=f_scores) == 1.0


def test_prepare_reads_ann_benchmarks_hdf5(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(1)
    train = rng.standard_normal((400, 8)).astype(np.float32) * 3
    test = rng.standard_normal((10, 8)).astype(np.float32)
    path = tmp_path / "toy-8-euclidean.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs["distance"] = "euclidean"
        f["train"], f["test"] = train, test
        f["neighbors"] = np.zeros((10, 100), dtype=np.int32)  # ignored: recomputed
    name = f"hdf5:{path}"
    assert bench_data.dataset_dim(name, 384) == 8
    ds = bench_data.prepare(
        name, 300, dim=8, cache_dir=tmp_path / "c", queries=10, log=lambda m: None
    )
    base = np.asarray(ds.base())
    assert np.allclose(
        base, train[:300] / np.linalg.norm(train[:300], axis=1, keepdims=True), atol=1e-6
    )
    q = ds.queries()
    ids, _ = ds.truth("all")
    assert np.array_equal(ids[:, :10], np.argsort(-(q @ base.T), axis=1, kind="stable")[:, :10])


# --- configurations ---------------------------------------------------------------------------


def test_specs_and_selection() -> None:
    assert faiss_nlist(1_000_000) == 4000
    assert faiss_nlist(10_000) == 10_000 // 39  # trained: at least 39 vectors per list
    names = [s.name for s in select("faiss,chroma", quick=False, urls={})]
    assert names == ["faiss-flat", "faiss-hnsw", "faiss-ivf", "chroma"]
    assert "qdrant-server" not in [s.name for s in select("all", quick=False, urls={})]
    assert [s.name for s in select("all", quick=True, urls={})] == [
        s.name for s in SPECS.values() if s.in_quick
    ]
    with pytest.raises(Exception, match="unknown store configuration"):
        select("nope", quick=False, urls={})
    # pgvector's own estimate: 64 MB holds ~29.7k 384-d vectors at m 16.
    assert 64 * 2**20 / pg_hnsw_graph_bytes(1, 384) == pytest.approx(29_746, rel=0.01)


def test_parse_sizes() -> None:
    assert bench.parse_sizes("10k,1m,1.5M,250000") == [10_000, 250_000, 1_000_000, 1_500_000]
    with pytest.raises(Exception, match="bad size"):
        bench.parse_size("ten")


# --- report, cliffs explained, advice ------------------------------------------------------------


def _record(config: str, n: int, **kw: object) -> dict:
    base = {
        "status": "ok",
        "dataset": "synthetic",
        "config": config,
        "n": n,
        "dim": 384,
        "backend": config.split("-")[0],
        "family": "hnsw",
        "options": {},
        "description": config,
        "quick": False,
    }
    return {**base, **kw}


def _sweep(param: str, points: list[tuple[int, float, float]]) -> list[dict]:
    return [
        {
            "param": param,
            "value": v,
            "recall": r,
            "mean_ms": ms,
            "p50_ms": ms,
            "p95_ms": ms,
            "p99_ms": ms,
            "qps_serial": 1000 / ms,
        }
        for v, r, ms in points
    ]


def test_report_explains_a_pgvector_build_cliff(tmp_path: Path) -> None:
    opts = {"index": "hnsw", "m": 16, "ef_construction": 64, "maintenance_work_mem": "64MB"}
    recs = [
        _record(
            "pgvector-hnsw",
            n,
            options=opts,
            index_total_s=t,
            p50_ms=1.0,
            p99_ms=2.0,
            peak_rss_max_mb=100,
            sweep=_sweep("ef_search", [(40, 0.99, 1.0)]),
        )
        for n, t in ((10_000, 5.0), (20_000, 10.0), (100_000, 200.0))
    ]
    cliffs = detect(recs)
    builds = [c for c in cliffs if c["metric"] == "index_total_s"]
    assert [(c["n1"], c["n2"]) for c in builds] == [(20_000, 100_000)]
    assert "maintenance_work_mem" in builds[0]["text"] and "64 MB" in builds[0]["text"]
    path = write_report(tmp_path, recs, command="python -m eval.bench --test")
    text = path.read_text()
    assert "## Cliffs" in text and "maintenance_work_mem" in text
    assert (tmp_path / "build_vs_n_synthetic.png").stat().st_size > 1000


def test_report_marks_a_budget_cliff(tmp_path: Path) -> None:
    recs = [
        _record(
            "chroma",
            10_000,
            index_total_s=5.0,
            p50_ms=1.0,
            job_wall_s=30.0,
            peak_rss_max_mb=100,
            sweep=_sweep("ef_search", [(100, 1.0, 1.0)]),
        ),
        {
            **_record("chroma", 100_000),
            "status": "skipped",
            "reason": "over budget (60 s), during load 5,000/100,000",
        },
    ]
    cliffs = detect(recs)
    assert any(c["metric"] == "budget" and c["n2"] == 100_000 for c in cliffs)
    text = write_report(tmp_path, recs, command="x").read_text()
    assert "over budget (60 s)" in text


def test_advise_picks_fastest_that_meets_recall() -> None:
    recs = []
    for n, drop in ((100_000, 0.0), (1_000_000, 0.01)):
        recs.append(
            _record(
                "fast-hnsw",
                n,
                index_total_s=n / 1000,
                peak_rss_max_mb=n / 1000,
                sweep=_sweep("ef_search", [(16, 0.90 - drop, 0.2), (64, 0.99 - drop, 0.4)]),
            )
        )
        recs.append(
            _record(
                "slow-flat",
                n,
                family="flat",
                index_total_s=n / 10_000,
                peak_rss_max_mb=n / 500,
                sweep=[
                    {
                        "param": None,
                        "value": None,
                        "recall": 1.0,
                        "mean_ms": n / 10_000,
                        "p50_ms": 1,
                        "p95_ms": 1,
                        "p99_ms": 1,
                        "qps_serial": 1,
                    }
                ],
            )
        )
    # 2M is past the 1M measured: allowed here by a stated factor.
    text = advise(recs, n=2_000_000, dim=384, recall=0.95, ram_mb=24_000, max_factor=2)
    assert "Recommendation: fast-hnsw" in text and "ef_search=64" in text
    # On a 5 GB machine the flat scan's predicted 4 GB at 2M is too much: excluded, said so.
    small = advise(recs, n=2_000_000, dim=384, recall=0.95, ram_mb=5_000, max_factor=2)
    assert "slow-flat: excluded" in small and "Recommendation: fast-hnsw" in small
    assert "slow-flat: excluded" not in text
    # A target no configuration reaches by its fastest parameter picks the exact one.
    text = advise(recs, n=2_000_000, dim=384, recall=0.999, ram_mb=24_000, max_factor=2)
    assert "Recommendation: slow-flat" in text
    assert predict_recall([(100_000, 0.99), (200_000, 0.98)], 800_000) == pytest.approx(0.96)


# --- the runner: resume, budget, and the quick run ---------------------------------------------


def _run(out: Path, cache: Path, *extra: str) -> int:
    return bench.main(
        [
            "--out",
            str(out),
            "--cache-dir",
            str(cache),
            "--no-progress",
            "--queries",
            "30",
            "--filtered-queries",
            "10",
            "--clients",
            "1",
            "--search-seconds",
            "5",
            "--throughput-seconds",
            "0.5",
            "--batch",
            "1000",
            *extra,
        ]
    )


def test_resume_skips_finished_jobs_and_repairs_a_torn_line(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ("--sizes", "1000,2000", "--stores", "faiss-flat", "--budget-seconds", "300")
    assert _run(out, cache, *args) == 0
    results = out / "results.jsonl"
    first = bench.load_records(results)
    assert [(r["n"], r["status"]) for r in first] == [(1000, "ok"), (2000, "ok")]
    assert all(r["recall"] == 1.0 for r in first)  # exact search finds the exact top 10
    # A crash while the second result was being written: its line is torn.
    lines = results.read_text().splitlines()
    results.write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    assert _run(out, cache, *args) == 0
    again = bench.load_records(results)
    assert [r["n"] for r in again] == [1000, 2000]  # the first not rerun, no duplicates
    assert again[0]["started"] == first[0]["started"]
    assert len({r["key"] for r in again}) == 2
    # Everything finished: a third run runs nothing.
    assert _run(out, cache, *args) == 0
    assert len(bench.load_records(results)) == 2
    assert (out / "report.md").exists()


def test_budget_kills_a_job_and_larger_sizes_are_skipped(tmp_path: Path) -> None:
    out, cache = tmp_path / "out", tmp_path / "cache"
    # One second is less than a worker needs to start: killed, recorded, never a hang.
    assert (
        _run(out, cache, "--sizes", "1000,2000", "--stores", "faiss-hnsw", "--budget-seconds", "1")
        == 0
    )
    recs = bench.load_records(out / "results.jsonl")
    assert [r["status"] for r in recs] == ["skipped", "skipped"]
    assert recs[0]["reason"].startswith("over budget (1 s)")
    assert "skipped at 1k already" in recs[1]["reason"]
    assert not list((out / "work").glob("*/store"))  # the killed job's store was removed
    # A rerun does not retry what was skipped.
    assert (
        _run(out, cache, "--sizes", "1000,2000", "--stores", "faiss-hnsw", "--budget-seconds", "1")
        == 0
    )
    assert len(bench.load_records(out / "results.jsonl")) == 2
    assert "skipped" in (out / "report.md").read_text()


def test_faiss_ivf_trains_at_39_per_list(tmp_path: Path) -> None:
    from rag.filters import parse
    from rag.store import StoreConfig
    from rag.types import Chunk
    from vectorstores.faiss import FaissStore

    x = bench_data.synthetic_block(0, 400, dim=16, clusters=8, seed=2)
    chunks = [Chunk(str(uuid.UUID(int=i + 1)), "", {"bucket": i % 100}) for i in range(400)]
    config = StoreConfig(tmp_path, options={"index": "ivf", "nlist": 4, "nprobe": 4})
    store = FaissStore("ivf", dim=16, config=config)
    store.upsert(chunks[:150], x[:150])  # 150 < 39 * 4: still exact
    assert store.search(x[3], k=1)[0].id == chunks[3].id
    assert not store._ivf_trained()
    store.upsert(chunks[150:], x[150:])  # now trained, all 400 in the lists
    assert store._ivf_trained() and store._index.ntotal == 400
    store.delete([chunks[3].id])
    assert store._index.ntotal == 399
    assert chunks[3].id not in {h.id for h in store.search(x[3], k=10)}
    store.close()
    reopened = FaissStore("ivf", dim=16, config=config, create=False)
    assert reopened._ivf_trained() and reopened.count() == 399
    hits = reopened.search(x[10], k=5, where=parse({"bucket": 10}))
    assert all(h.chunk.metadata["bucket"] == 10 for h in hits)
    assert [h.id for h in hits][:1] == [chunks[10].id]
    reopened.close()


@pytest.mark.slow
def test_quick_run_writes_results_plots_and_report(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    assert (
        bench.main(
            ["--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
        )
        == 0
    )
    recs = bench.load_records(out / "results.jsonl")
    assert {r["n"] for r in recs} == {10_000, 20_000}
    ok = [r for r in recs if r["status"] == "ok"]
    flat = [r for r in ok if r["config"] == "faiss-flat"]
    assert len(flat) == 2 and all(r["recall"] == 1.0 for r in flat)
    assert all(r["filtered"]["1%"]["recall"] == 1.0 for r in flat)
    assert all(r["throughput"]["2"]["qps"] > 0 for r in flat)  # concurrent clients measured
    for r in ok:
        assert 0.5 <= r["recall"] <= 1.0 and r["p50_ms"] > 0 and r["peak_rss_max_mb"] > 0
    for name in (
        "report.md",
        "build_vs_n_synthetic.png",
        "p99_vs_n_synthetic.png",
        "memory_vs_n_synthetic.png",
        "recall_qps_synthetic_20k.png",
    ):
        assert (out / name).stat().st_size > 500, name
    report = (out / "report.md").read_text()
    assert "faiss-flat" in report and "python -m eval.bench --quick" in report
    assert "FAISS flat (exact) recall@10 is 1.000 in all 6 measurements" in report
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["key"] for line in lines})
