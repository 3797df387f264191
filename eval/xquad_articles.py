"""Article retrieval on XQuAD-en, and agreement between vector stores.

Writes the dataset's articles as one markdown file each, ingests the folder into each
requested store (the embedding cache makes every store after the first cost no embedding),
asks every question with the same search as ``rag search QUESTION --k 5 --json``, and
reports how often the gold article is among the sources; with several stores, how often
their top-5 agree with the first store's.

    python -m eval.xquad_articles --dataset ../shared/datasets/xquad_en/xquad.en.json \
        --stores faiss,chroma,qdrant,pgvector --out eval/results/xquad_articles.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from eval.datasets import load_squad, write_articles
from rag.collection import open_collection
from rag.config import Settings


def run(
    dataset: Path,
    stores: list[str],
    *,
    data_dir: Path,
    k: int = 5,
    embed_backend: str | None = None,
    limit: int | None = None,
) -> dict:
    ds = load_squad(dataset)
    questions = ds.questions[:limit] if limit else ds.questions
    folder = data_dir / "articles"
    paths = write_articles(ds, folder)
    gold_file = {title: str(p.resolve()) for title, p in paths.items()}
    results: dict = {
        "dataset": str(dataset),
        "questions": len(questions),
        "articles": len(paths),
        "k": k,
        "stores": {},
    }
    tops: dict[str, list[list[str]]] = {}
    for store in stores:
        settings = Settings.from_env(
            data_dir=data_dir / "rag", store=store, collection="xquad", embed_backend=embed_backend
        )
        with open_collection(settings, create=True) as col:
            t0 = time.perf_counter()
            report = col.ingest([folder])
            ingest_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            queries = [q.question for q in questions]
            hits_per_q = col.retriever.search_batch(queries, k=k, mode="dense")
            search_s = time.perf_counter() - t0
            found = [
                gold_file[q.article] in {h.chunk.source for h in hits}
                for q, hits in zip(questions, hits_per_q, strict=True)
            ]
            top1 = [
                bool(hits) and hits[0].chunk.source == gold_file[q.article]
                for q, hits in zip(questions, hits_per_q, strict=True)
            ]
            tops[store] = [[h.id for h in hits] for hits in hits_per_q]
            results["stores"][store] = {
                "chunks": report.total_chunks,
                "embedded": report.embedded,
                "ingest_seconds": round(ingest_s, 2),
                "search_seconds": round(search_s, 2),
                f"article_hit@{k}": round(sum(found) / len(found), 4),
                "article_hit@1": round(sum(top1) / len(top1), 4),
            }
    if len(stores) > 1:
        base = stores[0]
        for store in stores[1:]:
            same_set = sum(set(a) == set(b) for a, b in zip(tops[base], tops[store], strict=True))
            same_order = sum(a == b for a, b in zip(tops[base], tops[store], strict=True))
            results["stores"][store][f"same_top{k}_as_{base}"] = round(same_set / len(questions), 4)
            results["stores"][store][f"same_top{k}_order_as_{base}"] = round(
                same_order / len(questions), 4
            )
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", type=Path, required=True, help="a SQuAD-format file, e.g. xquad.en.json"
    )
    p.add_argument(
        "--stores", default="faiss", help="comma-separated stores; the first is the reference"
    )
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the collections here (default: a temp dir)",
    )
    p.add_argument("--embed-backend", default=None)
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or Path(tmp)
        result = run(
            args.dataset,
            args.stores.split(","),
            data_dir=data_dir,
            k=args.k,
            embed_backend=args.embed_backend,
            limit=args.limit,
        )
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
