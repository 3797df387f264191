"""IR metrics as trec_eval and BEIR compute them, through ranx.

ranx computes nDCG, recall and MRR like trec_eval (linear gains for nDCG, a document counts
as relevant for recall and MRR when its grade is at least 1) but breaks score ties by its own
order. trec_eval orders ties by document id, descending. :func:`evaluate_run` therefore
re-ranks every query's list as trec_eval would and hands ranx strictly decreasing scores,
so the numbers match trec_eval's (and thus BEIR's published ones) exactly.
"""

from __future__ import annotations

import os
import re
import string
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10")


def trec_order(scores: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval's order: score descending, then id descending."""
    return [d for d, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def evaluate_run(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean of each metric over the judged queries (a judged query with no results scores 0).

    With ``per_query`` the result maps each metric to ``{query id: value}``.
    """
    os.environ.setdefault(
        "NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "numba")
    )
    from ranx import Qrels, Run, evaluate

    judged = {q: {d: int(g) for d, g in docs.items()} for q, docs in qrels.items() if docs}
    ranked: dict[str, dict[str, float]] = {}
    for q in judged:
        order = trec_order(run.get(q, {}))
        # Strictly decreasing scores carry trec_eval's tie order into ranx.
        ranked[q] = {d: float(len(order) - i) for i, d in enumerate(order)}
        if not ranked[q]:
            ranked[q] = {"__none__": 0.0}  # ranx needs a document; it is never relevant
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(
            Qrels(judged),
            Run(ranked),
            list(metrics),
            return_mean=not per_query,
            make_comparable=True,
        )
    if not per_query:
        if len(metrics) == 1:
            return {metrics[0]: float(result)}  # type: ignore[arg-type]
        return {m: float(v) for m, v in result.items()}  # type: ignore[union-attr]
    queries = list(Qrels(judged).keys())
    values = result if len(metrics) > 1 else {metrics[0]: result}
    return {
        m: dict(zip(queries, map(float, np.asarray(v)), strict=True)) for m, v in values.items()
    }  # type: ignore[union-attr]


def percentiles(
    samples: Sequence[float], points: Sequence[float] = (50, 95, 99)
) -> dict[str, float]:
    """``{"p50": ..., ...}`` with linear interpolation between closest ranks (numpy's default)."""
    if not len(samples):
        return {f"p{p:g}": float("nan") for p in points}
    arr = np.asarray(samples, dtype=np.float64)
    return {f"p{p:g}": float(np.percentile(arr, p)) for p in points}


# --- SQuAD answer metrics (as the official evaluate-v1.1 script defines them) -----------------

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, punctuation removed, articles (a, an, the) removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised gold answer."""
    p = normalize_answer(prediction)
    return float(any(p == normalize_answer(g) for g in gold))


def f1_score(prediction: str, gold: Sequence[str]) -> float:
    """The best token-overlap F1 of the prediction against any gold answer."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for g in gold:
        ref = normalize_answer(g).split()
        common = Counter(pred) & Counter(ref)
        same = sum(common.values())
        if same == 0:
            continue
        precision, recall = same / len(pred), same / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains_answer(prediction: str, gold: Sequence[str]) -> float:
    """1.0 when any normalised gold answer appears in the normalised prediction."""
    p = f" {normalize_answer(prediction)} "
    return float(any(f" {normalize_answer(g)} " in p for g in gold if normalize_answer(g)))
