"""The evaluation harnesses end to end: BEIR retrieval and SQuAD QA, on small datasets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from eval import qa, retrieval
from rag.config import Settings


def hashing_settings(data_dir: Path) -> Settings:
    return Settings(data_dir=data_dir, embed_model="hashing-384", embed_backend="hashing")


def write_beir(folder: Path, corpus: dict, queries: dict, qrels: dict) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with open(folder / "corpus.jsonl", "w") as f:
        for did, doc in corpus.items():
            f.write(
                json.dumps({"_id": did, "title": doc.get("title", ""), "text": doc["text"]}) + "\n"
            )
    with open(folder / "queries.jsonl", "w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(folder / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\r\n")
        for qid, docs in qrels.items():
            for did, grade in docs.items():
                f.write(f"{qid}\t{did}\t{grade}\r\n")
    return folder


def test_retrieval_harness_on_a_toy_dataset(tmp_path: Path) -> None:
    corpus = {
        "d1": {"title": "Volcanoes", "text": "Magma chambers feed volcanic eruptions."},
        "d2": {"title": "Glaciers", "text": "Glaciers retreat as the climate warms."},
        "d3": {"title": "Tides", "text": "The moon's gravity drives ocean tides."},
        "d4": {"title": "", "text": "Coral reefs bleach in hot water."},
    }
    queries = {
        "q1": "what feeds volcanic eruptions",
        "q2": "why do glaciers retreat",
        "q3": "unrelated zebra",
    }
    qrels = {"q1": {"d1": 2}, "q2": {"d2": 1}, "q3": {"d4": 1}}
    ds = write_beir(tmp_path / "toy", corpus, queries, qrels)
    result = retrieval.run(
        ds, hashing_settings(tmp_path / "rag"), modes=("dense", "bm25", "hybrid")
    )
    assert (result["documents"], result["queries"], result["chunks"]) == (4, 3, 4)
    bm25 = result["modes"]["bm25"]
    # q1 and q2 find their document first; q3 shares no word with d4.
    assert bm25["ndcg@10"] == pytest.approx(2 / 3, abs=1e-4) and bm25["mrr@10"] == pytest.approx(
        2 / 3, abs=1e-4
    )
    for mode in ("dense", "hybrid"):
        m = result["modes"][mode]
        assert 0.0 <= m["ndcg@10"] <= 1.0 and m["latency_ms"]["p50"] > 0
    again = retrieval.run(ds, hashing_settings(tmp_path / "rag"), modes=("bm25",))
    assert again["embedded_at_ingest"] == 0  # the collection was reused
    assert "| bm25 |" in retrieval.markdown(again)


def test_retrieval_harness_reads_scifact(shared_datasets: Path, tmp_path: Path) -> None:
    """A 600-document slice of SciFact (every judged document of 60 test queries plus
    others), BM25 only: checks the BEIR reader, title+text joining and the qrels."""
    src = shared_datasets / "scifact"
    corpus = {}
    with open(src / "corpus.jsonl") as f:
        for line in f:
            row = json.loads(line)
            corpus[row["_id"]] = {"title": row["title"], "text": row["text"]}
    qrels: dict[str, dict[str, int]] = {}
    with open(src / "qrels" / "test.tsv") as f:
        next(f)
        for line in f:
            qid, did, grade = line.strip().split("\t")
            qrels.setdefault(qid, {})[did] = int(grade)
    picked = dict(list(qrels.items())[:60])
    queries = {}
    with open(src / "queries.jsonl") as f:
        for line in f:
            row = json.loads(line)
            if row["_id"] in picked:
                queries[row["_id"]] = row["text"]
    keep = {d for docs in picked.values() for d in docs}
    others = sorted(set(corpus) - keep)
    keep |= set(random.Random(0).sample(others, 600 - len(keep)))
    ds = write_beir(
        tmp_path / "scifact-slice", {d: corpus[d] for d in sorted(keep)}, queries, picked
    )
    result = retrieval.run(ds, hashing_settings(tmp_path / "rag"), modes=("bm25",))
    assert result["queries"] == 60 and result["documents"] == 600
    assert result["modes"]["bm25"]["ndcg@10"] > 0.6
    assert result["modes"]["bm25"]["recall@100"] > 0.85


def test_qa_harness_on_an_xquad_slice(shared_datasets: Path, tmp_path: Path) -> None:
    data = json.loads((shared_datasets / "xquad_en" / "xquad.en.json").read_text())
    data["data"] = data["data"][:3]
    small = tmp_path / "xquad-slice.json"
    small.write_text(json.dumps(data))
    s = hashing_settings(tmp_path / "rag").with_(mode="bm25")
    result = qa.run(small, s, generators=("extractive", "openai"), limit=20)
    assert result["paragraphs"] == sum(len(a["paragraphs"]) for a in data["data"])
    assert result["hit@5"] > 0.8 and result["hit@1"] <= result["hit@5"]
    ex = result["generators"]["extractive"]
    assert ex["contains_answer"] > 0.3 and ex["cites_any"] > 0.5
    assert ex["cites_gold_paragraph"] <= ex["cites_any"]
    assert "skipped" in result["generators"]["openai"]  # no endpoint configured in tests
    assert "| extractive |" in qa.markdown(result)


def test_qa_harness_reports_each_route(shared_datasets: Path, tmp_path: Path) -> None:
    data = json.loads((shared_datasets / "xquad_en" / "xquad.en.json").read_text())
    data["data"] = data["data"][:2]
    small = tmp_path / "xquad-slice.json"
    small.write_text(json.dumps(data))
    routes = tmp_path / "routes.toml"
    # Paragraph files are p0000_<title>.txt ...: passages of paragraph 0 are private, and the
    # rule that matches them next chooses an endpoint that is not local, so those questions
    # are refused before anything is sent (nothing listens on the port); the rest split on
    # question length.
    routes.write_text(
        'default = "long"\n'
        '[generators.short]\nkind = "extractive"\n'
        '[generators.long]\nkind = "extractive"\n'
        '[generators.cloud]\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        '[[rules]]\nsource = "*/p0000_*"\nlocal_only = true\n'
        '[[rules]]\nsource = "*/p0000_*"\ngenerator = "cloud"\n'
        '[[rules]]\nmax_words = 8\ngenerator = "short"\n'
    )
    s = hashing_settings(tmp_path / "rag").with_(mode="bm25", routes=routes)
    result = qa.run(small, s, generators=("extractive",), limit=30)
    routed = result["generators"]["routed"]
    per_route = routed["routes"]
    assert set(per_route) == {"short", "long"}
    assert routed["refused"] > 0
    assert routed["refused"] + sum(r["questions"] for r in per_route.values()) == 30
    for r in per_route.values():
        assert {"contains_answer", "f1", "cites_gold_paragraph", "unsupported_sentences"} <= set(r)
        assert r["latency_ms"]["p50"] >= 0
    text = qa.markdown(result)
    assert "| routed: short |" in text and "| routed: long |" in text
    assert f"({routed['refused']} refused)" in text
