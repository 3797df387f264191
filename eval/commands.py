"""``rag eval`` and ``rag bench``: the measurement commands, plugins of ``ragkit.commands``.

Their modules (eval.retrieval, eval.qa, eval.multiturn, eval.bench) are imported only when
they run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rag.commands import (
    Command,
    add_collection_options,
    add_embedding_options,
    settings_from_args,
    wants_json,
)
from rag.config import RETRIEVAL_MODES
from rag.errors import ConfigError

#: Under the data directory, unless --out says otherwise.
RESULTS_DIR = "eval-results"

# --- rag bench ---------------------------------------------------------------------------------


def _run_bench(args: argparse.Namespace) -> int:
    from eval.bench import main as bench_main

    return bench_main(args.argv)


bench = Command(
    help="benchmark the vector stores: recall, latency, build time, memory vs N (rag bench --help)",
    configure=lambda p: None,
    run=_run_bench,
    passthrough=True,
)


# --- rag eval ----------------------------------------------------------------------------------


def _configure_eval(p: argparse.ArgumentParser) -> None:
    kinds = p.add_subparsers(dest="eval_kind", required=True, metavar="KIND")
    r = kinds.add_parser(
        "retrieval", help="nDCG@10, Recall@10/100, MRR@10 on a BEIR-format dataset"
    )
    add_collection_options(r)
    r.add_argument(
        "--dataset",
        type=Path,
        required=True,
        metavar="DIR",
        help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv",
    )
    r.add_argument(
        "--modes", default=",".join(RETRIEVAL_MODES), help="comma-separated: dense, bm25, hybrid"
    )
    add_embedding_options(r)
    r.add_argument("--batch-size", type=int, default=64, help="queries embedded together")
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default <data dir>/eval-results/"
        "retrieval-<dataset>-<store>-<backend>.json)",
    )
    q = kinds.add_parser("qa", help="hit@1/5, SQuAD EM/F1 and citations on a SQuAD-format file")
    add_collection_options(q)
    q.add_argument("--dataset", type=Path, required=True, metavar="FILE", help="e.g. xquad.en.json")
    q.add_argument(
        "--generators",
        default="extractive,local",
        help="comma-separated: extractive, local, openai (openai needs OPENAI_BASE_URL/KEY)",
    )
    q.add_argument(
        "--limit",
        type=int,
        default=100,
        help="questions answered per generator (a fixed random sample; 0 = all)",
    )
    q.add_argument("--k", type=int, default=None, help="passages per question (default 5)")
    q.add_argument("--mode", choices=RETRIEVAL_MODES, default=None)
    q.add_argument(
        "--routes",
        type=Path,
        default=None,
        metavar="FILE",
        help="a routes file (docs/routing.md): also answer every question by the route it "
        "chooses and report each route (default: <data dir>/routes.toml when it exists)",
    )
    add_embedding_options(q)
    q.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default <data dir>/eval-results/qa-<dataset>-<store>.json)",
    )
    m = kinds.add_parser(
        "multiturn",
        help="follow-up questions over the sample corpus: gold source in the top k with and "
        "without making them standalone",
    )
    add_collection_options(m)
    m.add_argument(
        "--corpus",
        type=Path,
        default=None,
        metavar="DIR",
        help="the sample corpus, ingested first (default: the checkout's data/ folder)",
    )
    m.add_argument(
        "--no-local", action="store_true", help="skip the local model (its rewrites take seconds)"
    )
    m.add_argument("--k", type=int, default=None, help="passages per follow-up (default 5)")
    m.add_argument("--mode", choices=RETRIEVAL_MODES, default=None)
    m.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file, every query included "
        "(default <data dir>/eval-results/multiturn-<store>.json)",
    )


def _run_eval(args: argparse.Namespace) -> int:
    as_json = wants_json(args)
    settings = settings_from_args(args)
    if args.eval_kind == "retrieval":
        from eval.retrieval import MODES, markdown, run

        modes = _choose(args.modes, MODES, "mode")
        result = run(
            args.dataset,
            settings,
            modes=modes,
            batch_size=args.batch_size,
            progress=not as_json and sys.stderr.isatty(),
        )
        out = args.out or settings.data_dir / RESULTS_DIR / (
            f"retrieval-{args.dataset.resolve().name}-{result['store']}-"
            f"{result['embed_backend']}.json"
        )
    elif args.eval_kind == "multiturn":
        from eval.multiturn import CORPUS, markdown, run

        corpus = args.corpus or CORPUS
        if not corpus.is_dir():
            raise ConfigError(f"no sample corpus at {corpus}; give its folder with --corpus")
        result = run(settings, k=settings.k, local=not args.no_local, corpus=corpus)
        result["store"] = settings.store
        out = args.out or settings.data_dir / RESULTS_DIR / f"multiturn-{settings.store}.json"
    else:
        from eval.qa import GENERATORS, markdown, run

        names = _choose(args.generators, GENERATORS, "generator")
        result = run(
            args.dataset,
            settings,
            generators=names,
            limit=args.limit or None,
            k=settings.k,
            progress=not as_json and sys.stderr.isatty(),
        )
        out = args.out or (
            settings.data_dir / RESULTS_DIR / f"qa-{args.dataset.stem}-{result['store']}.json"
        )
    _write(out, result)
    print(json.dumps(result, indent=2) if as_json else markdown(result) + f"\n\n(written to {out})")
    return 0


def _choose(given: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in given.split(",") if n.strip()]
    bad = [n for n in names if n not in known]
    if bad:
        raise ConfigError(f"unknown {what}(s) {', '.join(bad)}; choose from {', '.join(known)}")
    return names


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


evaluate = Command(
    help="measure retrieval and answer quality on standard datasets",
    configure=_configure_eval,
    run=_run_eval,
)
