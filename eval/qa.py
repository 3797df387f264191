"""``rag eval qa``: retrieval and answers on a SQuAD-format file (XQuAD-en, SQuAD v1.1).

Each paragraph becomes one document (a text file under the data directory, ingested like
any folder, so a second run embeds nothing). Retrieval is measured on every question: hit@1
and hit@5 of the gold paragraph. Answers are measured per generator on a fixed random
sample of questions (``--limit``, seed 0), because a CPU LLM takes seconds per answer:

* SQuAD exact match and F1 against the gold answers (official normalisation). Generators
  answer in sentences while gold answers are short spans, so EM is low by construction;
* how often the answer contains a gold answer;
* how often the answer cites the gold paragraph (and whether it cites anything);
* answer latency p50/p95 (retrieval excluded: it is the same for every generator);
* the unsupported-sentence rate, by a check independent of ragkit's own grounding
  (:func:`unsupported_sentences`: token and bigram precision of each answer sentence
  against the passages it cites, no embedder), and how often the generator abstained;
* abstention: ``min(50, limit)`` questions of the same sample asked of ragkit's sample
  corpus (the repository's ``data/`` folder, about ragkit itself), which answers none of
  them: the share answered with :data:`~rag.generation.ABSTAIN` (ought to be near 1);
* with an OpenAI-compatible endpoint configured: faithfulness, the share of answer
  sentences that the endpoint's model judges supported by the passages they cite.
"""

from __future__ import annotations

import itertools
import random
import re
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from eval.datasets import load_squad, write_paragraphs
from eval.metrics import contains_answer, exact_match, f1_score, normalize_answer, percentiles
from eval.retrieval import corpus_folder
from rag.collection import open_collection
from rag.config import Settings, openai_endpoint
from rag.errors import RouteRefused
from rag.generation import ABSTAIN, Generator, answer, load_generator
from rag.generation.extractive import split_sentences
from rag.routing import Router, find_routes
from rag.types import Answer, Hit

#: ``local-raw`` is the local model writing its answer itself, without ragkit's grounding
#: (how ``local`` answered before it was grounded).
GENERATORS = ("extractive", "local", "local-raw", "openai")
_CITE = re.compile(r"\[\d+(?:\s*[-–,]\s*\d+)*\]")
#: The sample corpus that answers no XQuAD question, for the abstention measurement.
SAMPLE_CORPUS = Path(__file__).resolve().parents[1] / "data"
ABSTENTION_QUESTIONS = 50
#: An answer sentence is supported when at least this share of its tokens...
MIN_TOKEN_PRECISION = 0.75
#: ...and of its word bigrams occur in a passage it cites (all passages when it cites none).
MIN_BIGRAM_PRECISION = 0.5


def run(
    dataset: Path,
    settings: Settings,
    *,
    generators: Sequence[str] = ("extractive", "local"),
    limit: int | None = 100,
    k: int = 5,
    progress: bool = False,
) -> dict[str, Any]:
    ds = load_squad(dataset)
    folder, collection = corpus_folder(dataset, settings.data_dir)
    settings = settings.with_(collection=collection)
    paths = write_paragraphs(ds, folder)
    out: dict[str, Any] = {
        "dataset": str(dataset),
        "paragraphs": len(paths),
        "questions": len(ds.questions),
        "k": k,
        "store": settings.store,
        "mode": settings.mode,
        "generators": {},
    }
    with open_collection(settings, create=True) as col:
        t0 = time.perf_counter()
        report = col.ingest([folder])
        out["ingest_seconds"] = round(time.perf_counter() - t0, 2)
        out["embed_model"], out["embed_backend"] = col.embed_model, col.embed_backend
        retriever = col.retriever
        texts = [q.question for q in ds.questions]
        vectors = col.embedder.embed(texts) if settings.mode != "bm25" else [None] * len(texts)
        hits_for = [
            retriever.search(t, vector=v, k=k, mode=settings.mode)
            for t, v in zip(texts, vectors, strict=True)
        ]
        gold = [paths[q.paragraph] for q in ds.questions]
        out["chunks"] = report.total_chunks
        out["hit@1"] = round(
            sum(bool(h) and h[0].chunk.source == g for h, g in zip(hits_for, gold, strict=True))
            / len(gold),
            4,
        )
        out["hit@5"] = round(
            sum(g in {x.chunk.source for x in h[:5]} for h, g in zip(hits_for, gold, strict=True))
            / len(gold),
            4,
        )

        sample = list(range(len(ds.questions)))
        if limit is not None and limit < len(sample):
            sample = sorted(random.Random(0).sample(sample, limit))
        out["answered"] = len(sample)
        judge = _judge() if openai_endpoint() != (None, None) else None
        embed = col.embedder.embed
        for name in generators:
            if name == "openai" and openai_endpoint() == (None, None):
                out["generators"][name] = {
                    "skipped": "no endpoint configured (OPENAI_BASE_URL / OPENAI_API_KEY)"
                }
                continue
            gen = _generator(name, settings, embed)
            rows = _answer_rows(
                lambda _q, _h, gen=gen: (gen, ""),
                [(ds.questions[i], hits_for[i], gold[i]) for i in sample],
                embed,
                judge,
                _bar(f"answers ({name})", progress, len(sample)),
            )
            out["generators"][name] = _summary(rows, gen.model)
        routes = find_routes(settings)
        if routes is not None:
            out["generators"]["routed"] = _routed(
                Router.load(routes),
                settings,
                [(ds.questions[i], hits_for[i], gold[i]) for i in sample],
                embed,
                judge,
                _bar("answers (routed)", progress, len(sample)),
            )
            out["routes_file"] = str(routes)
    if sample and any("skipped" not in g for g in out["generators"].values()):
        questions = [ds.questions[i].question for i in sample[:ABSTENTION_QUESTIONS]]
        _abstention(out, questions, settings, generators, k)
    return out


def _answer_rows(
    generator_for: Callable[[str, list[Hit]], tuple[Generator, str]],
    items: Sequence[tuple[Any, list[Hit], str]],
    embed: Any,
    judge: Any,
    bar: Any,
) -> list[dict[str, Any]]:
    """One row of measurements per ``(question, hits, gold source)``, answered by the
    generator ``generator_for(question, hits)`` names (with its route, "" when unrouted);
    a route refused is a row with ``refused`` only."""
    rows: list[dict[str, Any]] = []
    for q, hits, gold in items:
        try:
            gen, route = generator_for(q.question, hits)
        except RouteRefused:
            rows.append({"refused": 1.0})
            continue
        result = answer(gen, q.question, hits, embed=embed)
        plain = _CITE.sub("", result.text).strip()
        cited = {result.sources[n - 1].chunk.source for n in result.citations}
        unsupported, sentences = unsupported_sentences(result)
        row: dict[str, Any] = {
            "route": route,
            "model": gen.model,
            "unsupported": unsupported,
            "sentences": sentences,
            "abstained": float(_abstained(result)),
            "fell_back": float(result.grounding == "fell back"),
            "removed": result.removed,
            "em": exact_match(plain, q.answers),
            "f1": f1_score(plain, q.answers),
            "contains": contains_answer(plain, q.answers),
            "cites": float(bool(result.citations)),
            "cites_gold": float(gold in cited),
            "attributed": float(result.attributed),
            "seconds": result.timings["generate"],
        }
        if judge is not None:
            row["faithfulness"] = judge(result)
        rows.append(row)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows


def _routed(
    router: Router,
    settings: Settings,
    items: Sequence[tuple[Any, list[Hit], str]],
    embed: Any,
    judge: Any,
    bar: Any,
) -> dict[str, Any]:
    """Every question answered by the generator the routes file chooses for it: the
    measurements over all of them, and per route (``routes``); ``refused`` counts the
    questions the router refused (private passages and no local generator allowed)."""

    def choose(question: str, hits: list[Hit]) -> tuple[Generator, str]:
        route = router.decide(question, hits)
        return router.generator(route.name, settings, embed=embed), route.name

    rows = _answer_rows(choose, items, embed, judge, bar)
    answered = [r for r in rows if "refused" not in r]
    summary = _summary(answered, "per route") if answered else {"model": "per route"}
    summary["refused"] = len(rows) - len(answered)
    summary["routes"] = {
        name: {**_summary(group, group[0]["model"]), "questions": len(group)}
        for name in dict.fromkeys(r["route"] for r in answered)
        for group in [[r for r in answered if r["route"] == name]]
    }
    return summary


def _generator(name: str, settings: Settings, embed: Any) -> Generator:
    if name != "local-raw":
        return load_generator(settings.with_(generator=name), embed=embed)
    from rag.generation.local import LocalGenerator

    gen = LocalGenerator(
        settings.local_model,
        threads=settings.llm_threads,
        max_tokens=settings.max_tokens or 160,
        temperature=settings.temperature,
        grounded=False,
    )
    gen.name = "local-raw"  # type: ignore[misc]
    return gen


def _abstained(result: Answer) -> bool:
    return result.grounding == "abstained" or result.text.strip() == ABSTAIN


def _abstention(
    out: dict[str, Any],
    questions: list[str],
    settings: Settings,
    generators: Sequence[str],
    k: int,
) -> None:
    """Asks ``questions`` of the sample corpus (which answers none of them) and records,
    per generator, the share that abstained."""
    settings = settings.with_(collection="eval-abstention-sample")
    out["abstention"] = {"corpus": str(SAMPLE_CORPUS), "questions": len(questions)}
    with open_collection(settings, create=True) as col:
        col.ingest([SAMPLE_CORPUS])
        embed = col.embedder.embed
        vectors = (
            col.embedder.embed(questions) if settings.mode != "bm25" else [None] * len(questions)
        )
        hits_for = [
            col.retriever.search(q, vector=v, k=k, mode=settings.mode)
            for q, v in zip(questions, vectors, strict=True)
        ]
        for name in generators:
            if "skipped" in out["generators"].get(name, {"skipped": ""}):
                continue
            gen = _generator(name, settings, embed)
            abstained = [
                _abstained(answer(gen, q, hits, embed=embed))
                for q, hits in zip(questions, hits_for, strict=True)
            ]
            rate = round(sum(abstained) / len(abstained), 4)
            out["generators"][name]["abstains_unanswerable"] = rate


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def _precision(grams: list[Any], pool: list[Any]) -> float:
    if not grams:
        return 1.0
    available: dict[Any, int] = {}
    for g in pool:
        available[g] = available.get(g, 0) + 1
    hit = 0
    for g in grams:
        if available.get(g, 0) > 0:
            available[g] -= 1
            hit += 1
    return hit / len(grams)


def unsupported_sentences(result: Answer) -> tuple[int, int]:
    """``(unsupported, sentences)`` in an answer, by a rule independent of ragkit's own
    support check (:mod:`rag.generation.grounding`, which uses the embedder and content
    words): a sentence, citation marks removed and SQuAD-normalised, is supported when
    :data:`MIN_TOKEN_PRECISION` of its tokens and :data:`MIN_BIGRAM_PRECISION` of its
    bigrams (counts clipped) occur in one passage it cites, or in any passage when it cites
    none. An abstention has no sentence to check."""
    if _abstained(result) or not result.sources:
        return 0, 0
    passages = [_tokens(h.chunk.text) for h in result.sources]
    unsupported = total = 0
    for sentence in split_sentences(result.text):
        words = _tokens(_CITE.sub("", sentence))
        if not words:
            continue
        total += 1
        numbers = [
            n for n in range(1, len(result.sources) + 1) if re.search(rf"\[[^\]]*\b{n}\b", sentence)
        ] or list(range(1, len(result.sources) + 1))
        bigrams = list(itertools.pairwise(words))
        if not any(
            _precision(words, passages[n - 1]) >= MIN_TOKEN_PRECISION
            and _precision(bigrams, list(itertools.pairwise(passages[n - 1])))
            >= MIN_BIGRAM_PRECISION
            for n in numbers
        ):
            unsupported += 1
    return unsupported, total


def _summary(rows: list[dict[str, float]], model: str) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [r[key] for r in rows if r.get(key) is not None]
        return round(sum(vals) / len(vals), 4) if vals else None

    lat = percentiles([r["seconds"] * 1000 for r in rows], (50, 95))
    summary: dict[str, Any] = {
        "model": model,
        "exact_match": mean("em"),
        "f1": mean("f1"),
        "contains_answer": mean("contains"),
        "cites_any": mean("cites"),
        "cites_gold_paragraph": mean("cites_gold"),
        "citations_matched_by_ragkit": mean("attributed"),
        "unsupported_sentences": round(
            sum(r["unsupported"] for r in rows) / max(1, sum(r["sentences"] for r in rows)), 4
        ),
        "abstained": mean("abstained"),
        "fell_back": mean("fell_back"),
        "sentences_removed": sum(r["removed"] for r in rows),
        "latency_ms": {p: round(v, 1) for p, v in lat.items()},
    }
    if any("faithfulness" in r for r in rows):
        summary["faithfulness"] = mean("faithfulness")
    return summary


_JUDGE = (
    "You check whether a statement is supported by the given passages. Reply with one word: "
    "yes if the passages state or directly imply the statement, no otherwise."
)


def _judge() -> Any:
    """A faithfulness judge using the configured endpoint's model: the share of an
    answer's sentences that the passages they cite (or all passages, if none) support."""
    from rag.generation.openai_compat import OpenAIGenerator

    base_url, api_key = openai_endpoint()
    judge = OpenAIGenerator(None, base_url=base_url, api_key=api_key, max_tokens=4, temperature=0.0)

    def score(result: Any) -> float | None:
        sentences = [s for s in split_sentences(result.text) if _CITE.sub("", s).strip()]
        if not sentences:
            return None
        supported = 0
        for sentence in sentences:
            numbers = [
                n for n in range(1, len(result.sources) + 1) if f"[{n}]" in sentence
            ] or list(range(1, len(result.sources) + 1))
            passages = "\n\n".join(f"[{n}] {result.sources[n - 1].chunk.text}" for n in numbers)
            reply = "".join(
                judge.chat(
                    [
                        {"role": "system", "content": _JUDGE},
                        {
                            "role": "user",
                            "content": f"Passages:\n{passages}\n\nStatement: {_CITE.sub('', sentence).strip()}",
                        },
                    ]
                )
            )
            supported += reply.strip().lower().startswith("yes")
        return supported / len(sentences)

    return score


def _bar(desc: str, enabled: bool, total: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="question", file=sys.stderr, leave=False)


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{Path(result['dataset']).name} — {result['paragraphs']} paragraphs, {result['questions']} questions "
        f"({result['answered']} answered per generator); store {result['store']}, mode {result['mode']}, "
        f"{result['embed_model']} [{result['embed_backend']}]",
        "",
        f"Retrieval over all questions: hit@1 {result['hit@1']:.4f}, hit@5 {result['hit@5']:.4f}",
        "",
        "| generator | model | EM | F1 | contains answer | cites gold | cites any | unsupported "
        "sentences | abstained | fell back | abstains on sample corpus | p50 ms | p95 ms | faithfulness |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for name, g in result["generators"].items():
        rows.append((name, g))
        rows += [(f"{name}: {route}", r) for route, r in g.get("routes", {}).items()]
    for name, g in rows:
        if "skipped" in g:
            lines.append(f"| {name} | skipped: {g['skipped']} |" + "  |" * 12)
            continue
        if "f1" not in g:  # every routed question was refused
            lines.append(f"| {name} | refused: {g.get('refused', 0)} questions |" + "  |" * 12)
            continue
        faith = g.get("faithfulness")
        unanswerable = g.get("abstains_unanswerable")
        lines.append(
            f"| {name} | {g['model']} | {g['exact_match']:.3f} | {g['f1']:.3f} | {g['contains_answer']:.3f} | "
            f"{g['cites_gold_paragraph']:.3f} | {g['cites_any']:.3f} | {g['unsupported_sentences']:.3f} | "
            f"{g['abstained']:.3f} | {g['fell_back']:.3f} | "
            f"{'' if unanswerable is None else f'{unanswerable:.3f}'} | {g['latency_ms']['p50']:.0f} | "
            f"{g['latency_ms']['p95']:.0f} | {'' if faith is None else f'{faith:.3f}'} |"
        )
    if "routes_file" in result:
        refused = result["generators"]["routed"]["refused"]
        lines += [
            "",
            f"routed: each question answered by the generator {result['routes_file']} chooses "
            f"for it ({refused} refused); one row per route below it.",
        ]
    if "abstention" in result:
        a = result["abstention"]
        lines += [
            "",
            f"Abstention: {a['questions']} of the sampled questions asked of {a['corpus']}, "
            "which answers none of them.",
        ]
    return "\n".join(lines)
