"""Dynamic batching in ``rag serve`` (apps/serve/batching.py), FAISS's batch search, and the
load benchmark (eval/serve_bench.py) run end to end in its quick mode.

The collections use the model-free hashing embedder, whose vectors do not depend on a
text's companions in a batch: batched answers must equal unbatched ones exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from apps.serve.app import create_app
from apps.serve.batching import BatchConfig, MicroBatcher, SearchBatcher
from apps.serve.errors import ApiError
from apps.serve.gateway import GatewayConfig
from apps.serve.service import Service
from rag import Settings, open_collection
from rag.errors import ConfigError, EmbeddingError
from rag.store import StoreConfig
from rag.types import Chunk
from tests.serve_support import running
from vectorstores.faiss import FaissStore

ROOT = Path(__file__).resolve().parent.parent
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi pi rho".split()
QUERIES = [
    " ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + i % 9)) for i in range(48)
]


def settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(data_dir=data_dir, embed_model="hashing-384", embed_backend="hashing", **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A collection of 600 short sections in three files (``title`` a, b or c)."""
    d = tmp_path_factory.mktemp("batching")
    docs = d / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    for name in "abc":
        sections = [
            f"## s{i}\n\n" + " ".join(rng.choice(WORDS, size=int(rng.integers(4, 30))))
            for i in range(200)
        ]
        (docs / f"{name}.md").write_text("\n\n".join(sections) + "\n")
    with open_collection(settings(d), create=True) as col:
        col.ingest([docs])
    return d


@pytest.fixture
def service(data_dir: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(**kw: Any) -> Service:
        made.append(Service(settings(data_dir), batching=BatchConfig(**kw)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def pairs(hits: list[Any]) -> list[tuple[str, float]]:
    return [(h.id, h.score) for h in hits]


def concurrently(fn: Callable[[int], Any], n: int, *, threads: int = 24) -> list[Any]:
    """``fn(0) ... fn(n - 1)`` from ``threads`` threads released together."""
    start = threading.Barrier(min(threads, n))

    def call(i: int) -> Any:
        if i < start.parties:
            start.wait(timeout=30)
        return fn(i)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(call, range(n), timeout=120))


# --- the service -----------------------------------------------------------------------------


def test_batched_searches_equal_unbatched_for_many_callers(
    service: Callable[..., Service],
) -> None:
    batched = service(max_batch=8, max_wait_ms=50)
    plain = service(enabled=False)
    ref = batched.resolve("default")
    wheres = [None, {"title": "a"}, {"title": {"$in": ["b", "c"]}}]
    asks = [(q, 3 + i % 4, wheres[i % 3]) for i, q in enumerate(QUERIES)]
    expected = [pairs(plain.search(ref, q, k=k, where=w)) for q, k, w in asks]

    def ask(i: int) -> list[tuple[str, float]]:
        query, k, where = asks[i]
        return pairs(batched.search(ref, query, k=k, where=where))

    assert concurrently(ask, len(asks)) == expected
    assert expected == [
        pairs(plain.collection(ref).search(q, k=k, where=w)) for q, k, w in asks
    ]  # the unbatched path is Collection.search's
    stats = batched.batch_stats()["faiss/default"]
    assert stats["requests"] == len(asks)
    assert 1 < stats["largest"] <= 8  # batches formed, and none above max_batch


def test_batched_vectors_are_the_embedders_own(service: Callable[..., Service]) -> None:
    svc = service()
    col = svc.collection(svc.resolve("default"))
    batcher = SearchBatcher(col, BatchConfig(), name="t")
    try:
        vectors, failed = batcher._embed(QUERIES)
        assert failed == [None] * len(QUERIES)
        one_by_one = np.stack([col.embedder.embed_query(q) for q in QUERIES])
        assert np.array_equal(vectors, one_by_one)
    finally:
        batcher.close()


def test_other_modes_take_the_unbatched_path(service: Callable[..., Service]) -> None:
    svc = service(max_wait_ms=0)
    ref = svc.resolve("default")
    col = svc.collection(ref)
    for kw in ({"mode": "bm25"}, {"mode": "hybrid"}, {"mmr": True}):
        assert pairs(svc.search(ref, QUERIES[3], k=4, **kw)) == pairs(
            col.search(QUERIES[3], k=4, **kw)
        )
    assert svc.batch_stats() == {}
    with pytest.raises(ConfigError, match="k must be at least 1"):
        svc.search(ref, "alpha", k=-1)


class _Fragile:
    """The collection's embedder, failing on any text with "boom" in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.dim, self.id, self.backend = inner.dim, inner.id, inner.backend
        self.max_tokens = inner.max_tokens

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.inner.count_tokens(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        if any("boom" in t for t in texts):
            raise EmbeddingError("the model choked on boom")
        return self.inner.embed(texts)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


class _Sociable(_Fragile):
    """An embedder whose vectors move with their companions in a batch (as a dynamically
    quantized model's do), and are exact alone."""

    def embed(self, texts: list[str]) -> np.ndarray:
        out = self.inner.embed(texts)
        if len(texts) > 1:
            out = out + 0.01 * len(texts) * out[::-1]
            out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed([text])[0]


@pytest.mark.parametrize("together", [None, True])
def test_companion_dependent_vectors_are_embedded_alone(
    service: Callable[..., Service], together: bool | None
) -> None:
    """By default the batcher probes the embedder and, finding vectors that move with their
    companions, embeds each query alone: the answers stay the unbatched ones. Forced to
    embed together, they would not."""
    svc = service(max_batch=8, max_wait_ms=60_000, embed_together=together)
    plain = service(enabled=False)
    ref = svc.resolve("default")
    svc.collection(ref)._embedder = _Sociable(svc.collection(ref).embedder)
    asks = QUERIES[8:16]
    got = concurrently(lambda i: pairs(svc.search(ref, asks[i], k=5)), 8, threads=8)
    expected = [pairs(plain.search(ref, q, k=5)) for q in asks]
    assert (got == expected) is (together is None)


def test_an_embedding_error_reaches_only_its_caller(service: Callable[..., Service]) -> None:
    svc = service(max_batch=8, max_wait_ms=60_000)  # a batch goes when full
    plain = service(enabled=False)
    ref = svc.resolve("default")
    col = svc.collection(ref)
    col._embedder = _Fragile(col.embedder)
    asks = [*QUERIES[:7], "alpha boom beta"]

    def ask(i: int) -> Any:
        try:
            return pairs(svc.search(ref, asks[i], k=3))
        except EmbeddingError as e:
            return e

    got = concurrently(ask, len(asks), threads=8)
    assert isinstance(got[7], EmbeddingError)
    assert got[:7] == [pairs(plain.search(ref, q, k=3)) for q in asks[:7]]
    assert svc.batch_stats()["faiss/default"]["largest"] == 8  # they did share a batch


def test_a_store_error_stays_with_its_caller(service: Callable[..., Service]) -> None:
    svc = service(max_batch=4, max_wait_ms=60_000)
    ref = svc.resolve("default")
    ks = [2, 2, 2, 20_000]  # the store refuses k above 10,000

    def ask(i: int) -> Any:
        try:
            return len(svc.search(ref, QUERIES[i], k=ks[i]))
        except Exception as e:
            return type(e).__name__

    assert concurrently(ask, 4, threads=4) == [2, 2, 2, "ContractError"]
    assert svc.batch_stats()["faiss/default"]["largest"] == 4


def test_refs_follow_the_data_directory(tmp_path: Path) -> None:
    """refs() reuses its last reading only while no collection's files have changed: an
    ingest, a new collection and a dropped one show at once."""
    from rag.collection import drop_collection

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("## one\n\nalpha beta\n\n## two\n\ngamma delta\n")
    svc = Service(settings(tmp_path / "data"))
    try:
        assert svc.refs() == []
        with open_collection(settings(tmp_path / "data"), create=True) as col:
            col.ingest([docs])
        assert [(r.name, r.chunks, r.sources) for r in svc.refs()] == [("default", 2, 1)]
        assert svc.refs() == svc.refs()  # unchanged: the same reading
        (docs / "b.md").write_text("## three\n\nepsilon\n")
        with open_collection(settings(tmp_path / "data"), create=True) as col:
            col.ingest([docs])
        assert [(r.chunks, r.sources) for r in svc.refs()] == [(3, 2)]
        with open_collection(settings(tmp_path / "data", collection="other"), create=True) as col:
            col.ingest([docs])
        assert sorted(r.id for r in svc.refs()) == ["ragkit/default", "ragkit/other"]
        drop_collection(settings(tmp_path / "data"), "other")
        assert [r.id for r in svc.refs()] == ["ragkit/default"]
    finally:
        svc.close()


# --- the micro-batcher ------------------------------------------------------------------------


def test_max_batch_is_respected_and_a_full_batch_goes_at_once() -> None:
    sizes: list[int] = []

    def process(values: list[int]) -> list[int]:
        sizes.append(len(values))
        time.sleep(0.01)
        return [v * 2 for v in values]

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=5, max_wait_ms=60_000)
    try:
        futures = [batcher.submit(i) for i in range(20)]
        # Were a full batch kept waiting for companions, these would take a minute.
        assert [f.result(timeout=20) for f in futures] == [i * 2 for i in range(20)]
    finally:
        batcher.close()
    assert max(sizes) <= 5 and sum(sizes) == 20
    stats = batcher.stats()
    assert (stats["batches"], stats["requests"], stats["largest"]) == (4, 20, 5)


def test_a_lone_request_waits_at_most_max_wait() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(
        lambda values: [v.upper() for v in values], max_batch=8, max_wait_ms=300
    )
    try:
        t0 = time.monotonic()
        assert batcher("x") == "X"
        waited = time.monotonic() - t0
        t0 = time.monotonic()
        assert batcher("y") == "Y"
        second = time.monotonic() - t0
    finally:
        batcher.close()
    assert 0.25 <= waited < 5.0  # it waited for company, and not much past the bound
    assert second < 0.25  # no company came last time: the next lone request goes at once
    assert batcher.stats()["waited"] == 1


def test_outcomes_and_failures_reach_their_callers() -> None:
    def process(values: list[int]) -> list[int | Exception]:
        if 99 in values:
            raise RuntimeError("the whole batch failed")
        return [ValueError(f"odd {v}") if v % 2 else v for v in values]

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=4, max_wait_ms=60_000)
    try:
        good = [batcher.submit(i) for i in range(4)]
        assert good[0].result(10) == 0 and good[2].result(10) == 2
        with pytest.raises(ValueError, match="odd 1"):
            good[1].result(10)
        doomed = [batcher.submit(v) for v in (1, 2, 3, 99)]
        for f in doomed:
            with pytest.raises(RuntimeError, match="whole batch"):
                f.result(10)
    finally:
        batcher.close()


def test_close_drains_then_refuses() -> None:
    release = threading.Event()

    def process(values: list[int]) -> list[int]:
        release.wait(10)
        return values

    batcher: MicroBatcher[int, int] = MicroBatcher(process, max_batch=2, max_wait_ms=0)
    futures = [batcher.submit(i) for i in range(7)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    release.set()
    closing.join(20)
    assert [f.result(0) for f in futures] == list(range(7))  # all answered before close returned
    with pytest.raises(ApiError) as refused:
        batcher.submit(8)
    assert refused.value.status == 503


def test_a_full_queue_answers_503() -> None:
    release = threading.Event()
    batcher: MicroBatcher[int, int] = MicroBatcher(
        lambda v: (release.wait(10), v)[1], max_batch=1, max_wait_ms=0, max_queue=2
    )
    try:
        first = batcher.submit(0)
        deadline = time.monotonic() + 10
        while batcher.stats()["batches"] == 0 and time.monotonic() < deadline:
            time.sleep(0.005)  # the worker holds the first; two more fill the queue
        batcher.submit(1), batcher.submit(2)
        with pytest.raises(ApiError) as busy:
            batcher.submit(3)
        assert busy.value.status == 503 and busy.value.headers["Retry-After"] == "1"
    finally:
        release.set()
        batcher.close()
    assert first.result(0) == 0


def test_bad_settings_are_refused() -> None:
    for kw in ({"max_batch": 0}, {"max_wait_ms": -1.0}, {"max_queue": 0}):
        with pytest.raises(ConfigError):
            BatchConfig(**kw)


# --- FAISS's batch search ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [{}, {"index": "hnsw"}, {"index": "ivf", "nlist": 8, "nprobe": 2}],
    ids=["flat", "hnsw", "ivf"],
)
def test_faiss_search_many_equals_search_per_row(tmp_path: Path, options: dict) -> None:
    """Row for row what ``search`` gives, ids and scores: with no filter, a wide one
    (FAISS's own selector) and a narrow one (ranked exactly), and rows masked out."""
    dim, n = 32, 3000
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(n, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    chunks = [Chunk(f"c{i}", f"text {i}", {"g": i % 10}) for i in range(n)]
    store = FaissStore("c", dim=dim, config=StoreConfig(tmp_path, options=options))
    try:
        store.upsert(chunks, vecs)
        store.delete([f"c{i}" for i in range(0, 300, 7)])
        queries = rng.normal(size=(40, dim)).astype(np.float32)
        for where in (None, {"g": {"$lt": 8}}, {"g": 3}):
            for k in (1, 10):
                batched = store.search_many(queries, k=k, where=where)
                one_by_one = [store.search(q, k=k, where=where) for q in queries]
                assert [pairs(h) for h in batched] == [pairs(h) for h in one_by_one]
                assert all(len(h) == k for h in batched)
    finally:
        store.close()


# --- over HTTP, and the benchmark --------------------------------------------------------------


def test_the_search_endpoint_batches_concurrent_requests(data_dir: Path) -> None:
    app = create_app(settings(data_dir), gateway_config=GatewayConfig(rate_per_minute=None))
    svc = Service(settings(data_dir), batching=BatchConfig(max_batch=16, max_wait_ms=200))
    app.state.service = svc  # create_app's own service has the default batching
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:

            def ask(i: int) -> list[tuple[str, float]]:
                r = client.post("/v1/search", json={"model": "ragkit/default", "query": QUERIES[i]})
                assert r.status_code == 200, r.text
                return [(h["id"], h["score"]) for h in r.json()["hits"]]

            got = concurrently(ask, 24, threads=12)
        col = svc.collection(svc.resolve("default"))
        assert got == [[(h.id, round(h.score, 6)) for h in col.search(q)] for q in QUERIES[:24]]
        stats = svc.batch_stats()["faiss/default"]
        assert stats["requests"] == 24 and stats["largest"] > 1
    finally:
        svc.close()


def test_chat_completions_retrieve_through_the_batcher(data_dir: Path) -> None:
    app = create_app(
        settings(data_dir, generator="extractive"),
        gateway_config=GatewayConfig(rate_per_minute=None),
    )
    svc = Service(
        settings(data_dir, generator="extractive"),
        batching=BatchConfig(max_batch=16, max_wait_ms=200),
    )
    app.state.service = svc
    try:
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:

            def ask(i: int) -> list[str]:
                body = {
                    "model": "ragkit/default",
                    "messages": [{"role": "user", "content": QUERIES[i]}],
                }
                r = client.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                return [s["id"] for s in r.json()["sources"]]

            got = concurrently(ask, 12, threads=12)
        col = svc.collection(svc.resolve("default"))
        # The same passages as an unbatched ask, and the searches shared batches.
        for i, ids in enumerate(got):
            assert ids == [h.id for h in col.search(QUERIES[i])][: len(ids)]
        stats = svc.batch_stats()["faiss/default"]
        assert stats["requests"] == 12 and stats["largest"] > 1
    finally:
        svc.close()


def test_the_benchmark_runs_end_to_end_in_quick_mode(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rng = np.random.default_rng(2)
    with open(corpus, "w") as f:
        for d in range(40):
            sents = [" ".join(rng.choice(WORDS, size=8)).capitalize() + "." for _ in range(6)]
            f.write(json.dumps({"_id": str(d), "title": f"Doc {d} title", "text": " ".join(sents)}))
            f.write("\n")
    (tmp_path / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": str(i), "text": q}) + "\n" for i, q in enumerate(QUERIES))
    )
    out = tmp_path / "out" / "bench.json"
    cmd = [sys.executable, "-m", "eval.serve_bench", "--quick", "--corpus", str(corpus)]
    cmd += ["--embed-backend", "hashing", "--embed-model", "hashing-384", "--chunks", "200"]
    cmd += ["--data-dir", str(tmp_path / "data"), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["collection"]["chunks"] == 200
    runs = {(r["endpoint"], r["batching"], r["clients"]): r for r in result["runs"]}
    assert set(runs) == {
        (e, b, c) for e in ("search", "chat") for b in (True, False) for c in (1, 4)
    }
    assert all(r["ok"] > 0 and r["errors"] == 0 for r in runs.values())
    assert result["batch_stats"]["on"]["faiss/scifact-200"]["requests"] >= 24
    assert result["batch_stats"]["off"] == {}
    assert all(a["identical"] == a["compared"] > 0 for a in result["agreement"].values())
    assert result["server"]["gateway"]["rate_per_minute"] is None
    assert set(result["cpu"]) == {"flags", "model", "cpus"}
    assert "| search | on | 4 |" in out.with_suffix(".md").read_text()
