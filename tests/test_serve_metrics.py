"""``rag serve``'s Prometheus metrics at ``/metrics``, read back with prometheus_client's own
parser after real requests over a socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from apps.serve.app import create_app
from apps.serve.gateway import GatewayConfig
from apps.serve.keys import KeyStore, key_store_path
from rag import open_collection
from tests.serve_support import hashing_settings as settings
from tests.serve_support import running

ROOT = Path(__file__).resolve().parent.parent
MODEL = "ragkit/default"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("metrics")
    with open_collection(settings(d), create=True) as col:
        col.ingest([ROOT / "data"])
    return d


def scrape(http: httpx.Client, **kw: object) -> dict[str, list[tuple[dict[str, str], float]]]:
    r = http.get("/metrics", **kw)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    found = [
        v for lab, v in samples.get(name, []) if all(lab.get(k) == x for k, x in labels.items())
    ]
    assert found, f"no {name} with {labels}"
    return sum(found)


@pytest.fixture(scope="module")
def http(data_dir: Path) -> Iterator[httpx.Client]:
    app = create_app(settings(data_dir), gateway_config=GatewayConfig(rate_per_minute=None))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def test_requests_stages_and_batches_are_counted(http: httpx.Client) -> None:
    for i in range(3):
        r = http.post("/v1/search", json={"model": MODEL, "query": f"chunk size {i}", "k": 3})
        assert r.status_code == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "What is a chunk?"}]}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200
    assert http.post("/v1/search", json={"model": "ragkit/nope", "query": "x"}).status_code == 404
    assert http.get("/no/such/path").status_code == 404

    m = scrape(http)
    total = "ragkit_http_requests_total"
    assert value(m, total, route="/v1/search", method="POST", status="200") == 3
    assert value(m, total, route="/v1/search", method="POST", status="404") == 1
    assert value(m, total, route="/v1/chat/completions", status="200") == 1
    assert value(m, total, route="other", status="404") == 1
    assert not [lab for lab, _ in m[total] if lab["route"] == "/metrics"]  # not itself
    count = "ragkit_http_request_seconds_count"
    assert value(m, count, route="/v1/search", method="POST") == 4
    # Per collection: the searches (and the chat's retrieval, which is a search too).
    stage = "ragkit_stage_seconds_count"
    assert value(m, stage, collection=MODEL, stage="search") == 4
    for name in ("rewrite", "retrieve", "generate", "first_token"):
        assert value(m, stage, collection=MODEL, stage=name) == 1
    outcomes = "ragkit_collection_requests_total"
    assert value(m, outcomes, collection=MODEL, endpoint="search", outcome="ok") == 4
    assert value(m, outcomes, collection=MODEL, endpoint="chat", outcome="ok") == 1
    assert value(m, "ragkit_batched_requests_total", collection="faiss/default") == 4
    assert value(m, "ragkit_batches_total", collection="faiss/default") >= 1
    assert value(m, "ragkit_batch_largest", collection="faiss/default") >= 1


def test_a_failed_search_is_counted_by_its_error_class(data_dir: Path) -> None:
    from apps.serve.metrics import Metrics
    from apps.serve.service import Service

    svc = Service(settings(data_dir))
    svc.metrics = metrics = Metrics(svc.batch_stats)
    ref = svc.resolve("default")

    def broken(ref: object) -> object:
        raise RuntimeError("the store went away")

    svc.collection = broken  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError):
            svc.search(ref, "anything")
    finally:
        svc.close()
    m = {
        s.name: s
        for f in text_string_to_metric_families(metrics.exposition().decode())
        for s in f.samples
        if s.name == "ragkit_collection_requests_total"
    }
    sample = m["ragkit_collection_requests_total"]
    assert sample.labels == {"collection": MODEL, "endpoint": "search", "outcome": "RuntimeError"}
    assert sample.value == 1


def test_with_keys_metrics_need_a_read_key(tmp_path: Path, data_dir: Path) -> None:
    store = KeyStore(key_store_path(tmp_path))
    _, token = store.create("scraper", scopes=["read"])
    _, ingest_only = store.create("uploader", scopes=["ingest"])
    with open_collection(settings(tmp_path), create=True) as col:
        col.ingest([ROOT / "data" / "06-chunking.md"])
    app = create_app(
        settings(tmp_path),
        keys=KeyStore(key_store_path(tmp_path)),
        gateway_config=GatewayConfig(rate_per_minute=None),
    )
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/v1/models").status_code == 401  # counted, refused as it is
        bad = client.get("/metrics", headers={"Authorization": f"Bearer {ingest_only}"})
        assert bad.status_code == 403
        m = scrape(client, headers={"Authorization": f"Bearer {token}"})
        assert value(m, "ragkit_http_requests_total", route="/v1/models", status="401") == 1
        assert token not in str(m)


def test_served_searches_and_answers_reach_the_query_log(tmp_path: Path) -> None:
    """The batched search path bypasses Collection.search: it logs its own event, with the
    query's vector for drift; a chat logs one event (the answer's), its search included."""
    from rag.monitoring import FILE_NAME, open_query_log

    with open_collection(settings(tmp_path, log_queries="text"), create=True) as col:
        col.ingest([ROOT / "data"])
        log_file = col.path / FILE_NAME
    app = create_app(settings(tmp_path), gateway_config=GatewayConfig(rate_per_minute=None))
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for q in ("default chunk size", "which vector stores"):
            r = client.post("/v1/search", json={"model": MODEL, "query": q, "k": 3})
            assert r.status_code == 200
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "What is a chunk?"}]}
        assert client.post("/v1/chat/completions", json=chat).status_code == 200
        stats = app.state.service.batch_stats()["faiss/default"]
        assert stats["requests"] == 3  # all three went through the batcher
        app.state.service.collection(app.state.service.resolve("default")).querylog.flush()
    events = open_query_log(log_file).events()
    assert [(e["op"], e["query"]) for e in events] == [
        ("search", "default chunk size"),
        ("search", "which vector stores"),
        ("ask", "What is a chunk?"),
    ]
    for e in events:
        assert e["error"] == "" and e["hits"] > 0 and e["top_score"] is not None
        assert e["vector"] is not None  # the batched vector reached the log
        assert e["search"] > 0  # the stage's seconds
    assert events[2]["citations"] is not None and events[2]["generate"] is not None
