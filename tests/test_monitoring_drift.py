"""Drift with the real embedding model: SciFact claims asked of a SciFact collection do not
drift from SciFact claims (PSI under 0.1, ok); XQuAD-en questions asked of it do (PSI over
0.2, alert), and far more of them are out of the corpus's coverage.

The collection: the abstracts that the first 400 training claims and the 300 test claims
cite (480 documents, each cut to its first 120 words), embedded with ``onnx-int8``, named
here because the figures in docs/monitoring.md were measured with it: with
``openvino-int8`` (the default on VNNI CPUs since) the same 300 test claims gave a topic
PSI of 0.115, "watch", where ``onnx-int8`` gives 0.076. Ten topics and 300 against 400
queries put PSI's sampling noise alone near 0.05, so either is the same distribution; the
0.1 band sits close to that noise at these sizes (noted in docs/monitoring.md). The first 400 training claims, asked first, are the query reference (the first
``reference_queries`` queries); then the 300 test claims; then 200 XQuAD-en questions.
The figures are printed (``pytest -s``) and quoted in docs/monitoring.md.
"""

from __future__ import annotations

import os

import pytest

from eval.datasets import load_beir, load_squad
from rag import Settings, open_collection
from rag.monitoring import Thresholds, Window, build_report
from tests.conftest import SHARED

REFERENCE = 400
WINDOW = 300
XQUAD = 200
WORDS = 120


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    # conftest's shared_datasets rule, for a fixture built once for the module.
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing, and CI must run the dataset tests")
        pytest.skip(f"{SHARED} is not present (it sits beside the repository in CI)")
    shared = SHARED
    test = load_beir(shared / "scifact", split="test")
    train = load_beir(shared / "scifact", split="train")
    train_ids = list(train.queries)[:REFERENCE]
    docs = sorted(
        {d for q in test.qrels.values() for d in q}
        | {d for qid in train_ids for d in train.qrels[qid]}
    )
    tmp = tmp_path_factory.mktemp("drift")
    corpus = tmp / "corpus"
    corpus.mkdir()
    for d in docs:
        words = test.doc_text(d).split()[:WORDS]
        (corpus / f"{d}.txt").write_text(" ".join(words), encoding="utf-8")
    xquad = [q.question for q in load_squad(shared / "xquad_en" / "xquad.en.json").questions]

    th = Thresholds(reference_queries=REFERENCE)
    out: dict[str, object] = {"documents": len(docs)}
    settings = Settings(data_dir=tmp / "rag", collection="scifact", embed_backend="onnx-int8")
    with open_collection(settings, create=True) as col:
        col.ingest([corpus])
        log = col.querylog
        out["chunks"] = col.store.count()
        out["reference"] = log.reference()
        for qid in train_ids:
            col.search(train.queries[qid])
        for claim in list(test.queries.values())[:WINDOW]:
            col.search(claim)
        out["scifact"] = build_report(
            log, collection=col.name, window=Window(count=WINDOW), thresholds=th
        )
        for question in xquad[:XQUAD]:
            col.search(question)
        out["xquad"] = build_report(
            log, collection=col.name, window=Window(count=XQUAD), thresholds=th
        )
    return out


def _figures(report) -> dict[str, object]:
    return {
        name: (report.signal(name).state, round(report.signal(name).value or 0.0, 4))
        for name in ("drift.topics", "drift.scores", "out_of_coverage")
    }


def test_scifact_claims_do_not_drift(reports: dict) -> None:
    r = reports["scifact"]
    print(f"\n{reports['documents']} documents, {reports['chunks']} chunks")
    print(f"threshold {reports['reference'].threshold:.4f}; scifact: {_figures(r)}")
    assert r.baseline == f"the first {REFERENCE} queries"
    topics, scores = r.signal("drift.topics"), r.signal("drift.scores")
    assert topics.state == "ok" and topics.value < 0.1
    assert scores.state == "ok" and scores.value < 0.1
    assert r.signal("out_of_coverage").state != "alert"
    assert r.signal("out_of_coverage").value < 0.05


def test_xquad_questions_drift_and_are_out_of_coverage(reports: dict) -> None:
    r, before = reports["xquad"], reports["scifact"]
    print(f"\nxquad: {_figures(r)}")
    topics, scores = r.signal("drift.topics"), r.signal("drift.scores")
    assert topics.state == "alert" and topics.value > 0.2
    assert scores.state == "alert" and scores.value > 0.2
    uncovered = r.signal("out_of_coverage")
    assert uncovered.state == "alert"
    assert uncovered.value > 0.5
    assert uncovered.value > 5 * before.signal("out_of_coverage").value
    assert r.state == "alert"
    assert "alert  drift.topics" in r.to_text()


def test_the_reference_is_the_corpus(reports: dict) -> None:
    ref = reports["reference"]
    assert ref.k == 10 and ref.chunks == reports["chunks"]
    assert ref.threshold is not None and 0.1 < ref.threshold < 0.9
