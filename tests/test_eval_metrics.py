"""The evaluation metrics against cases computed by hand (trec_eval conventions)."""

from __future__ import annotations

import math

import pytest

from eval.metrics import evaluate_run, percentiles, trec_order

LOG2_3 = math.log2(3)


def test_trec_order_breaks_ties_by_descending_id() -> None:
    assert trec_order({"d1": 0.5, "d3": 0.9, "d2": 0.5}) == ["d3", "d2", "d1"]


def test_graded_relevance_and_ties() -> None:
    qrels = {"q1": {"d1": 2, "d2": 1}}
    run = {"q1": {"d3": 0.9, "d1": 0.5, "d2": 0.5}}  # trec order: d3, d2, d1
    m = evaluate_run(qrels, run)
    dcg = 1 / LOG2_3 + 2 / math.log2(4)
    idcg = 2 / 1 + 1 / LOG2_3
    assert m["ndcg@10"] == pytest.approx(dcg / idcg, abs=1e-9)  # 0.6198
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@10"] == pytest.approx(1.0)


def test_grades_use_linear_gain() -> None:
    m = evaluate_run({"q": {"a": 3, "b": 1}}, {"q": {"b": 1.0, "a": 0.5}})
    assert m["ndcg@10"] == pytest.approx((1 + 3 / LOG2_3) / (3 + 1 / LOG2_3), abs=1e-9)  # 0.7967


def test_nothing_relevant_retrieved_and_missing_queries_score_zero() -> None:
    qrels = {"a": {"x": 1}, "b": {"y": 1}, "c": {"z": 1}}
    run = {"a": {"x": 1.0}, "b": {"nope": 3.0}}  # c has no results at all
    m = evaluate_run(qrels, run)
    assert m["ndcg@10"] == pytest.approx(1 / 3)
    assert m["mrr@10"] == pytest.approx(1 / 3)
    per = evaluate_run(qrels, run, ["ndcg@10"], per_query=True)["ndcg@10"]
    assert per == {"a": 1.0, "b": 0.0, "c": 0.0}


def test_cutoffs() -> None:
    ranked = {f"d{i:03d}": 100.0 - i for i in range(150)}
    m = evaluate_run({"q": {"d010": 1, "d120": 1}}, {"q": ranked})
    # d010 is at rank 11: outside the top 10, inside the top 100; d120 is at rank 121.
    assert m["recall@10"] == 0.0
    assert m["recall@100"] == pytest.approx(0.5)
    assert m["mrr@10"] == 0.0
    assert m["ndcg@10"] == 0.0


def test_zero_grade_judgements_are_not_relevant() -> None:
    m = evaluate_run({"q": {"a": 0, "b": 1}}, {"q": {"a": 2.0, "b": 1.0}})
    assert m["mrr@10"] == pytest.approx(0.5)
    assert m["recall@10"] == 1.0


def test_percentiles() -> None:
    p = percentiles(list(range(1, 101)))
    assert p["p50"] == pytest.approx(50.5)
    assert p["p95"] == pytest.approx(95.05)
    assert p["p99"] == pytest.approx(99.01)
    assert math.isnan(percentiles([])["p50"])


def test_squad_normalisation_em_f1_contains() -> None:
    from eval.metrics import contains_answer, exact_match, f1_score, normalize_answer

    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert exact_match("the Eiffel tower.", ["Eiffel Tower", "tower"]) == 1.0
    assert exact_match("Eiffel", ["Eiffel Tower"]) == 0.0
    # prediction "eiffel tower paris" vs gold "eiffel tower": precision 2/3, recall 1
    assert f1_score("Eiffel Tower, Paris", ["the Eiffel Tower"]) == pytest.approx(0.8)
    assert f1_score("nothing shared", ["Eiffel Tower"]) == 0.0
    assert f1_score("Paris", ["London", "Paris"]) == 1.0  # the best gold answer counts
    assert contains_answer("It is 330 metres tall [1].", ["330 metres"]) == 1.0
    assert contains_answer("It is 3300 metres tall.", ["330 metres"]) == 0.0
