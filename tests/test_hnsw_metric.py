"""eval/hnsw_metric.py end to end on a small synthetic set: both graphs are built, measured
and recorded, and a second run resumes instead of rebuilding."""

from __future__ import annotations

import json
from pathlib import Path

from eval.hnsw_metric import main, parse_size


def test_both_metrics_are_measured_and_a_rerun_resumes(tmp_path: Path, capsys) -> None:
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one insertion order: the graphs are then comparable
    try:
        _run(tmp_path, capsys)
    finally:
        faiss.omp_set_num_threads(threads)


def _run(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.jsonl"
    args = ["--sizes", "3k", "--queries", "50", "--ef-search", "16,64"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--out", str(out)]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["metric"] for r in rows] == ["ip", "l2"]
    for r in rows:
        assert r["n"] == 3000 and [s["ef_search"] for s in r["sweep"]] == [16, 64]
        assert all(0.5 < s["recall@10"] <= 1.0 for s in r["sweep"])
    # Unit vectors: the two graphs are the same graph.
    assert [s["recall@10"] for s in rows[0]["sweep"]] == [s["recall@10"] for s in rows[1]["sweep"]]
    assert main(args) == 0
    assert len(out.read_text().splitlines()) == 2
    assert "done before" in capsys.readouterr().out


def test_sizes_read_like_the_benchmarks() -> None:
    assert [parse_size(s) for s in ("100k", "1m", "2500", "1.5k")] == [100_000, 10**6, 2500, 1500]
