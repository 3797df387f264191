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
* with an OpenAI-compatible endpoint configured: faithfulness, the share of answer
  sentences that the endpoint's model judges supported by the passages they cite.
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.datasets import load_squad, write_paragraphs
from eval.metrics import contains_answer, exact_match, f1_score, percentiles
from eval.retrieval import corpus_folder
from rag.collection import open_collection
from rag.config import Settings, openai_endpoint
from rag.generation import answer, load_generator
from rag.generation.extractive import split_sentences

GENERATORS = ("extractive", "local", "openai")
_CITE = re.compile(r"\[\d+(?:\s*[-–,]\s*\d+)*\]")


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
        for name in generators:
            if name == "openai" and openai_endpoint() == (None, None):
                out["generators"][name] = {
                    "skipped": "no endpoint configured (OPENAI_BASE_URL / OPENAI_API_KEY)"
                }
                continue
            gen = load_generator(settings.with_(generator=name), embed=col.embedder.embed)
            rows = []
            bar = _bar(f"answers ({name})", progress, len(sample))
            for i in sample:
                q, hits = ds.questions[i], hits_for[i]
                result = answer(gen, q.question, hits, embed=col.embedder.embed)
                plain = _CITE.sub("", result.text).strip()
                cited = {result.sources[n - 1].chunk.source for n in result.citations}
                row = {
                    "em": exact_match(plain, q.answers),
                    "f1": f1_score(plain, q.answers),
                    "contains": contains_answer(plain, q.answers),
                    "cites": float(bool(result.citations)),
                    "cites_gold": float(gold[i] in cited),
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
            out["generators"][name] = _summary(rows, gen.model)
    return out


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
        "| generator | model | EM | F1 | contains answer | cites gold | cites any | p50 ms | p95 ms | faithfulness |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, g in result["generators"].items():
        if "skipped" in g:
            lines.append(f"| {name} | skipped: {g['skipped']} |  |  |  |  |  |  |  |  |")
            continue
        faith = g.get("faithfulness")
        lines.append(
            f"| {name} | {g['model']} | {g['exact_match']:.3f} | {g['f1']:.3f} | {g['contains_answer']:.3f} | "
            f"{g['cites_gold_paragraph']:.3f} | {g['cites_any']:.3f} | {g['latency_ms']['p50']:.0f} | "
            f"{g['latency_ms']['p95']:.0f} | {'' if faith is None else f'{faith:.3f}'} |"
        )
    return "\n".join(lines)
