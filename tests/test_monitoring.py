"""Monitoring: the arithmetic against hand-computed cases, the query log (non-blocking, what
it keeps, bounded), one event per call, the --log-queries option reaching the log, and the
latency and error signals moving when a stage is slowed and errors are injected.

Fast: the model-free hashing embedder and the extractive generator. The drift test with the
real model on SciFact and XQuAD is tests/test_monitoring_drift.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag import Settings, open_collection
from rag.errors import ConfigError, StoreError
from rag.monitoring import (
    FILE_NAME,
    QueryEvent,
    QueryLog,
    Thresholds,
    Window,
    build_report,
    kmeans,
    note_search,
    open_query_log,
    percentile,
    psi,
    search_event,
    stage_timings,
    take_baseline,
    timeline,
)
from rag.monitoring.report import rate_signal, wilson_low
from rag.monitoring.stats import PSI_FLOOR, bin_counts, category_counts, quantile_edges
from rag.types import Answer

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RAG = [sys.executable, "-m", "apps.cli"]


def settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(
        data_dir=data_dir,
        embed_model="hashing-256",
        embed_backend="hashing",
        generator="extractive",
        **kw,
    )


# --- the arithmetic, by hand -------------------------------------------------------------------


def test_percentile_interpolates_between_closest_ranks() -> None:
    # [1, 2, 3, 4]: rank (n - 1) q / 100; P95 at rank 2.85 = 3 + 0.85 * (4 - 3).
    assert percentile([4, 1, 3, 2], 95) == pytest.approx(3.85)
    assert percentile([1, 2, 3, 4], 50) == pytest.approx(2.5)
    assert percentile([1, 2, 3, 4], 0) == 1 and percentile([1, 2, 3, 4], 100) == 4
    assert percentile([10, 20], 95) == pytest.approx(19.5)
    # A single query is its own every percentile; none has none; NaNs are left out.
    assert percentile([0.25], 50) == 0.25 and percentile([0.25], 99) == 0.25
    assert percentile([], 95) is None
    assert percentile([float("nan"), 2.0], 95) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_psi_by_hand() -> None:
    # The same shares: nothing moved.
    assert psi([10, 20, 30], [20, 40, 60]) == 0.0
    # Halves to 3/4 and 1/4: (0.75 - 0.5) ln(1.5) + (0.25 - 0.5) ln(0.5).
    assert psi([50, 50], [75, 25]) == pytest.approx(0.25 * math.log(1.5) + 0.25 * math.log(2))
    assert psi([50, 50], [75, 25]) == pytest.approx(0.274653, abs=1e-6)


def test_psi_with_an_empty_bin_floors_its_share() -> None:
    # The reference never saw bin 2: its share counts as 0.0001, finite.
    expected = (0.5 - 1.0) * math.log(0.5 / 1.0) + (0.5 - PSI_FLOOR) * math.log(0.5 / PSI_FLOOR)
    assert psi([100, 0], [50, 50]) == pytest.approx(expected)
    assert psi([100, 0], [50, 50]) == pytest.approx(4.604319, abs=1e-6)
    # Empty on the other side: the same terms, mirrored.
    assert psi([50, 50], [100, 0]) == pytest.approx(expected)


def test_psi_of_all_queries_in_one_bin_and_of_a_single_query() -> None:
    # Four even bins; every query in the third: three bins at the floor, one at 1.
    one_bin = 3 * (PSI_FLOOR - 0.25) * math.log(PSI_FLOOR / 0.25) + 0.75 * math.log(4)
    assert psi([25, 25, 25, 25], [0, 0, 40, 0]) == pytest.approx(one_bin)
    assert psi([25, 25, 25, 25], [0, 0, 40, 0]) == pytest.approx(6.905408, abs=1e-6)
    # A single query is the same distribution as any number of them in one bin ...
    assert psi([25, 25, 25, 25], [1, 0, 0, 0]) == pytest.approx(one_bin)
    # ... which is why a window under min_queries is not judged.
    from rag.monitoring.report import psi_signal

    sig = psi_signal("drift.topics", [25, 25, 25, 25], [1, 0, 0, 0], Thresholds(), "queries")
    assert sig.state == "n/a" and "too few" in sig.why
    sig = psi_signal("drift.topics", [25, 25, 25, 25], [0, 0, 40, 0], Thresholds(), "queries")
    assert sig.state == "alert" and sig.value == pytest.approx(one_bin)


def test_psi_refuses_what_it_cannot_compare() -> None:
    for e, a in (([1, 2], [1, 2, 3]), ([0, 0], [1, 1]), ([1, 1], [0, 0]), ([1, -1], [1, 1])):
        with pytest.raises(ValueError):
            psi(e, a)


def test_bins_and_categories() -> None:
    assert bin_counts([0.1, 0.3, 0.5, 0.6, 0.9], np.array([0.3, 0.6])).tolist() == [1, 2, 2]
    assert quantile_edges(np.arange(1, 11), bins=2).tolist() == [5.5]
    # Repeated values make repeated edges, merged: fewer bins.
    assert quantile_edges([0.5] * 20).tolist() == [0.5]
    assert category_counts([0, 2, 2, -1, 7], 3).tolist() == [1, 0, 2]


def test_wilson_interval_and_rate_states() -> None:
    # 10 of 100: the 95% Wilson interval is [0.0552, 0.1744].
    assert wilson_low(10, 100) == pytest.approx(0.0552, abs=1e-4)
    assert wilson_low(0, 50) == 0.0
    assert rate_signal("errors", 0, 500, 0.01, "calls").state == "ok"
    assert rate_signal("errors", 2, 100, 0.01, "calls").state == "watch"  # 2%, could be chance
    assert rate_signal("errors", 10, 100, 0.01, "calls").state == "alert"
    assert rate_signal("errors", 0, 0, 0.01, "calls").state == "n/a"


def test_kmeans_separates_clusters() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal([1, 0, 0], 0.05, (40, 3))
    b = rng.normal([0, 1, 0], 0.05, (40, 3))
    x = np.vstack([a, b]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    centroids, labels = kmeans(x, 2)
    assert len(set(labels[:40])) == 1 and len(set(labels[40:])) == 1
    assert labels[0] != labels[40]
    assert np.allclose(np.linalg.norm(centroids, axis=1), 1.0, atol=1e-5)
    # k is cut to the distinct rows.
    assert kmeans(np.ones((5, 3), np.float32) / math.sqrt(3), 4)[0].shape == (1, 3)


def test_windows_parse() -> None:
    assert Window.parse("1h") == Window(seconds=3600)
    assert Window.parse("30m").seconds == 1800 and Window.parse("1d").seconds == 86400
    assert Window.parse("500") == Window(count=500)
    assert Window.parse("all") == Window()
    assert Window.parse("1d").describe() == "last 1d"
    for bad in ("", "0", "1y", "-5", "h"):
        with pytest.raises(ConfigError):
            Window.parse(bad)


def test_thresholds_are_checked() -> None:
    with pytest.raises(ConfigError):
        Thresholds(psi_watch=0.3, psi_alert=0.2)
    with pytest.raises(ConfigError):
        Thresholds(error_rate=1.5)


# --- the query log ------------------------------------------------------------------------------


def event(**kw: Any) -> QueryEvent:
    base: dict[str, Any] = {"op": "search", "mode": "dense", "k": 5, "hits": 5}
    base.update(kw)
    return QueryEvent(**base)


def test_record_never_blocks_drops_and_counts_when_full(tmp_path: Path, monkeypatch) -> None:
    log = QueryLog(tmp_path / FILE_NAME, queue_size=2)
    gate = threading.Event()
    writing = threading.Event()
    real_write = QueryLog._write

    def held(self: QueryLog, *args: Any) -> None:
        writing.set()
        assert gate.wait(30), "the test never released the writer"
        real_write(self, *args)

    monkeypatch.setattr(QueryLog, "_write", held)
    assert log.record(event(top_score=0.5))
    assert writing.wait(30)  # the writer holds the first event, and the queue takes 2 more
    accepted = [log.record(event(top_score=0.5)) for _ in range(10)]
    assert accepted == [True, True] + [False] * 8
    assert log.dropped == 8
    gate.set()
    assert log.flush(30)
    assert len(log.events()) == 3
    assert log.meta("dropped") == "8"
    log.close()


def test_what_each_policy_keeps(tmp_path: Path) -> None:
    vec = np.full(4, 0.5, dtype=np.float32)
    kept = {}
    for policy in ("none", "vector", "text", "off"):
        log = QueryLog(tmp_path / f"{policy}.sqlite")
        log.set_policy(policy)
        log.record(event(query="my private question", vector=vec, top_score=0.4))
        log.flush()
        rows = log.events()
        kept[policy] = None if not rows else (rows[0]["query"], rows[0]["vector"])
        log.close()
    assert kept["off"] is None
    assert kept["none"] == (None, None)
    assert kept["vector"][0] is None and np.allclose(kept["vector"][1], vec)
    assert kept["text"][0] == "my private question" and np.allclose(kept["text"][1], vec)
    with pytest.raises(ConfigError):
        QueryLog(tmp_path / "x.sqlite").set_policy("everything")


def test_the_log_is_bounded_by_age_and_size(tmp_path: Path) -> None:
    log = QueryLog(tmp_path / FILE_NAME, max_rows=50, max_age_days=1, prune_every=10)
    now = time.time()
    for i in range(20):
        log.record(event(ts=now - 3 * 86400 + i))  # three days old
    log.flush()
    for i in range(80):
        log.record(event(ts=now - 60 + i * 0.1))
        if i % 10 == 9:
            log.flush()
    log.flush()
    log.prune()
    rows = log.events()
    assert len(rows) == 50
    assert min(r["ts"] for r in rows) > now - 86400  # the old ones went first
    assert rows[-1]["ts"] == pytest.approx(now - 60 + 79 * 0.1)  # the newest stay
    log.close()


def test_events_reject_unknown_stages_and_ops() -> None:
    with pytest.raises(ValueError):
        QueryEvent(op="search", stages={"warp": 1.0})
    with pytest.raises(ValueError):
        QueryEvent(op="delete")


def test_stage_timings_of_an_answer() -> None:
    a = Answer(
        "x",
        [],
        "m",
        "extractive",
        timings={"rewrite": 0.1, "retrieve": 0.2, "generate": 0.3, "first_token": 0.05},
    )
    assert stage_timings(a) == {
        "rewrite": 0.1,
        "retrieve": 0.2,
        "generate": 0.3,
        "first_token": 0.05,
    }


# --- through the collection ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("monitoring")
    with open_collection(settings(d), create=True) as col:
        col.ingest([DATA])
    return d


def test_the_first_ingest_takes_the_corpus_reference(data_dir: Path) -> None:
    with open_collection(settings(data_dir)) as col:
        ref = col.querylog.reference()
        assert ref is not None and ref.chunks == col.store.count()
        assert ref.threshold is not None and 0 < ref.threshold < 1
        assert len(ref.probe_scores) > 10


def test_search_and_ask_log_one_event_each(data_dir: Path) -> None:
    with open_collection(settings(data_dir)) as col:
        log = col.querylog
        before = len(log.events())
        col.search("how are chunks cut from a Markdown file")
        a = col.ask("What is the default vector store?")
        rows = log.events()[before:]
    assert [r["op"] for r in rows] == ["search", "ask"]
    s, q = rows
    assert s["hits"] == 5 and s["score_kind"] == "dense" and s["centroid"] is not None
    assert s["embed"] > 0 and s["search"] > 0 and s["total"] >= s["search"]
    assert q["generator"] == "extractive" and q["citations"] == len(a.citations)
    assert q["grounding"] == a.grounding
    for stage in ("embed", "search", "rewrite", "retrieve", "generate", "first_token"):
        assert q[stage] is not None, stage
    assert q["retrieve"] == pytest.approx(a.timings["retrieve"])
    assert q["centroid"] is not None  # the vector of the search inside reached the answer
    # Policy none (the default): no question, no vector.
    assert s["query"] is None and s["vector"] is None


def test_a_hybrid_search_logs_finding_and_ordering_apart(data_dir: Path) -> None:
    with open_collection(settings(data_dir)) as col:
        log = col.querylog
        before = len(log.events())
        col.search("chunk size", mode="hybrid", mmr=True)
        (row,) = log.events()[before:]
    assert row["score_kind"] == "rrf"
    assert row["search"] > 0 and row["rerank"] > 0  # candidates, then fusion and MMR
    assert row["total"] >= row["embed"] + row["search"] + row["rerank"] - 1e-6


def test_an_ask_with_the_servers_search_logs_one_event(data_dir: Path) -> None:
    with open_collection(settings(data_dir)) as col:
        log = col.querylog
        before = len(log.events())
        col.ask("What is the default vector store?", search=col.search)  # nested search

        def batched(query: str, **kw: Any) -> list:
            vec = col.embedder.embed_query(query)
            hits = col.store.search(vec, k=kw["k"] or 5)
            assert note_search(vector=vec, stages={"embed": 0.001, "search": 0.002})
            return hits

        col.ask("What is the default vector store?", search=batched)
        rows = log.events()[before:]
    assert [r["op"] for r in rows] == ["ask", "ask"]
    assert rows[1]["embed"] == pytest.approx(0.001) and rows[1]["centroid"] is not None
    assert not note_search(vector=None)  # outside an answer there is nothing to attach to


def test_errors_are_logged_with_their_class(data_dir: Path) -> None:
    with open_collection(settings(data_dir)) as col:
        log = col.querylog
        before = len(log.events())
        with pytest.raises(Exception) as e:
            col.search("x", where={"page": {"$regex": "x"}})
        rows = log.events()[before:]
    assert [r["error"] for r in rows] == [type(e.value).__name__]
    assert rows[0]["hits"] == 0 and rows[0]["top_score"] is None


def test_log_queries_setting_reaches_the_log_and_is_saved(tmp_path: Path) -> None:
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([DATA])
    with open_collection(settings(tmp_path, log_queries="text")) as col:
        col.search("a question in plain words")
    # Saved with the collection: the next open, without the setting, keeps text.
    with open_collection(settings(tmp_path)) as col:
        assert col.querylog.policy == "text"
        col.search("another question")
        rows = col.querylog.events()
    assert [r["query"] for r in rows] == ["a question in plain words", "another question"]
    assert all(r["vector"] is not None for r in rows)
    with pytest.raises(ConfigError, match="unknown query logging"):
        settings(tmp_path, log_queries="all")


def test_log_queries_option_and_variable_reach_the_log(hashing_env: dict[str, str]) -> None:
    def rag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [*RAG, *args], capture_output=True, text=True, env={**hashing_env, **(env or {})},
            timeout=120, cwd=ROOT,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return out

    rag("ingest", str(DATA), "-q")
    rag("search", "first question")
    rag("monitor", "--log-queries", "text")
    rag("search", "second question")
    rag("search", "third question", env={"RAG_LOG_QUERIES": "vector"})
    rag("ask", "fourth question", "--generator", "extractive")
    report = json.loads(rag("monitor", "--json", "--window", "all").stdout)["report"]
    assert report["policy"] == "vector"  # the variable, last given, was saved too
    log = open_query_log(
        Path(hashing_env["RAG_DATA_DIR"]) / "collections" / "faiss" / "default" / FILE_NAME
    )
    rows = log.events()
    assert [r["query"] for r in rows] == [None, "second question", None, None]
    assert [r["vector"] is not None for r in rows] == [False, True, True, True]
    assert report["queries"] == 4 and {s["name"] for s in report["signals"]} >= {
        "errors",
        "out_of_coverage",
        "drift.topics",
    }
    out = subprocess.run(
        [*RAG, "monitor", "--log-queries", "everything"], capture_output=True, text=True,
        env=hashing_env, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_monitor_baseline_and_fail_on(hashing_env: dict[str, str]) -> None:
    env = {**hashing_env, "RAG_LOG_QUERIES": "vector"}

    def rag(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*RAG, *args], capture_output=True, text=True, env=env, timeout=120, cwd=ROOT
        )

    assert rag("ingest", str(DATA), "-q").returncode == 0
    data = Path(env["RAG_DATA_DIR"])
    with open_collection(Settings(data_dir=data)) as col:  # the collection's embedder
        for i in range(40):
            col.search(f"how are chunks cut {i}")
    out = rag("monitor", "baseline", "--window", "all")
    assert out.returncode == 0, out.stderr
    assert "query reference: 40 queries" in out.stdout
    assert "baseline: 40 queries up to" in out.stdout
    out = rag("monitor", "baseline", "a", "b")
    assert out.returncode == 2 and "one collection at a time" in out.stderr
    # --fail-on: the exit status says whether the state reached it.
    state = json.loads(rag("monitor", "--json").stdout)["report"]["state"]
    order = ["n/a", "ok", "watch", "alert"]
    failed = rag("monitor", "--fail-on", "watch").returncode
    assert failed == (1 if order.index(state) >= 2 else 0)


def test_corpus_drift_is_measured_at_each_ingest(tmp_path: Path, sample_corpus: Path) -> None:
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([sample_corpus])
        first = col.querylog.reference()
        # A small edit: the corpus still looks like itself.
        f = sorted(sample_corpus.glob("*.md"))[0]
        f.write_text(f.read_text() + "\n\nOne more sentence about chunks.\n")
        col.ingest([sample_corpus])
        small = col.querylog.drift_history()[-1]["psi"]
        # Many documents on other subjects: the corpus's topics shift.
        other = sample_corpus / "other"
        other.mkdir()
        rng = np.random.default_rng(0)
        words = [f"zq{i}x" for i in range(400)]
        for i in range(120):
            (other / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 150)))
        col.ingest([sample_corpus])
        large = col.querylog.drift_history()[-1]["psi"]
        report = build_report(col.querylog, collection=col.name, window=Window())
        assert col.querylog.reference().id == first.id  # drift is against the first
    assert small < 0.1 < 0.2 < large
    corpus = report.signal("drift.corpus")
    assert corpus.state == "alert" and corpus.value == pytest.approx(large)


# --- the latency and error signals move ---------------------------------------------------------


def test_a_slow_stage_and_errors_move_the_signals(tmp_path: Path, monkeypatch) -> None:
    th = Thresholds(reference_queries=60, min_queries=30)
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([DATA])
        log = col.querylog
        for i in range(60):  # the first 60 queries: the reference
            col.search(f"how are chunks cut {i}")
        for i in range(40):
            col.search(f"which store is the default {i}")
        calm = build_report(log, collection=col.name, window=Window(count=40), thresholds=th)

        embed_query = col.embedder.embed_query

        def slow(text: str) -> np.ndarray:
            time.sleep(0.03)
            return embed_query(text)

        monkeypatch.setattr(col.embedder, "embed_query", slow)
        for i in range(40):
            col.search(f"which store is the default {i}")
        slowed = build_report(log, collection=col.name, window=Window(count=40), thresholds=th)
        monkeypatch.setattr(col.embedder, "embed_query", embed_query)

        search = col.store.search
        calls = {"n": 0}

        def failing(vector: np.ndarray, **kw: Any) -> list:
            calls["n"] += 1
            if calls["n"] % 5 == 0:
                raise StoreError("injected: the store is unreachable")
            return search(vector, **kw)

        monkeypatch.setattr(col.store, "search", failing)
        for i in range(50):
            with contextlib.suppress(StoreError):
                col.search(f"which store is the default {i}")
        broken = build_report(log, collection=col.name, window=Window(count=50), thresholds=th)

    assert calm.signal("latency.embed").state != "alert"
    assert calm.signal("errors").state == "ok"
    assert slowed.signal("latency.embed").state == "alert"
    assert slowed.signal("latency.embed").value > 2 * slowed.signal("latency.embed").reference
    assert slowed.signal("latency.total.search").state == "alert"
    assert slowed.signal("capacity.search").state == "alert"
    assert slowed.state == "alert"
    errors = broken.signal("errors")
    assert errors.state == "alert" and errors.value == pytest.approx(10 / 50)
    assert "StoreError" in errors.why
    assert "alert  errors" in broken.to_text()


def test_baseline_from_the_window_and_the_timeline(tmp_path: Path) -> None:
    with open_collection(settings(tmp_path, log_queries="vector"), create=True) as col:
        col.ingest([DATA])
        log = col.querylog
        for i in range(60):
            col.search(f"how are chunks cut {i}")
        events = Window().events(log)
        # A new corpus reference: the logged vectors are assigned to its centroids.
        done = take_baseline(
            log, events=events, min_queries=30, store=col.store, embed=col.embedder.embed
        )
        assert done["query_reference"]["queries"] == 60
        assert sum(done["query_reference"]["topics"]) == 60
        report = build_report(log, collection=col.name, window=Window())
        assert "rag monitor baseline" in report.baseline
        assert report.signal("drift.topics").state == "ok"  # the same queries
        assert report.signal("drift.topics").value == pytest.approx(0.0)
        from rag.monitoring import current_query_reference

        qref, _ = current_query_reference(log, log.reference(), 200)
        rows = timeline(events, log.reference(), qref, group=20)
    assert len(rows) == 3
    assert all(r["p95"] >= r["p50"] > 0 for r in rows)
    assert all(r["psi_topics"] is not None and r["psi_scores"] is not None for r in rows)


def test_search_event_of_no_hits() -> None:
    e = search_event([], mode="bm25", k=5, kind="bm25", stages={"search": 0.01})
    assert e.hits == 0 and e.top_score is None and e.spread is None


def test_nothing_is_logged_where_the_data_directory_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([DATA])
        col.search("logged while writable")
        path = col.path
    n = len(open_query_log(path / FILE_NAME).events())
    assert n == 1
    # What rag.store.folder_writable says on a read-only mount (root ignores chmod).
    monkeypatch.setattr("rag.collection.folder_writable", lambda p: False)
    with open_collection(settings(tmp_path)) as col:
        assert col.querylog is None
        assert col.search("how are chunks cut")
    assert len(open_query_log(path / FILE_NAME).events()) == n
