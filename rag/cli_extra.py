"""Commands beyond the core (evaluation, benchmarks, the UI), kept apart to keep cli.py small.

Each registrar adds a subparser and names its handler; handlers import what they need
lazily, so `rag --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]
Common = Callable[[argparse.ArgumentParser], None]
EXTRA_COMMANDS: dict[str, Handler] = {}
RESULTS_DIR = Path("eval") / "results"


def add_extra_commands(sub: Any, common: Common) -> None:
    """Register the extra subcommands on ``sub`` (the main parser's subparsers)."""
    _eval_parser(sub, common)
    _bench_parser(sub)
    from apps.cli import add_ui_command, cmd_ui

    add_ui_command(sub, common)
    EXTRA_COMMANDS["ui"] = cmd_ui


# --- rag bench -------------------------------------------------------------------------------


def _bench_parser(sub: Any) -> None:
    # Every argument goes to eval.bench, which has its own parser and --help.
    p = sub.add_parser(
        "bench",
        help="benchmark the vector stores: recall, latency, build time, memory vs N "
        "(rag bench --help)",
        add_help=False,
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    EXTRA_COMMANDS["bench"] = _cmd_bench


def _cmd_bench(args: argparse.Namespace) -> int:
    from eval.bench import main as bench_main

    return bench_main(args.bench_args)


# --- rag eval -------------------------------------------------------------------------------


def _eval_parser(sub: Any, common: Common) -> None:
    p = sub.add_parser("eval", help="measure retrieval and answer quality on standard datasets")
    common(p)
    kinds = p.add_subparsers(dest="eval_kind", required=True, metavar="KIND")
    r = kinds.add_parser(
        "retrieval", help="nDCG@10, Recall@10/100, MRR@10 on a BEIR-format dataset"
    )
    common(r)
    r.add_argument(
        "--dataset",
        type=Path,
        required=True,
        metavar="DIR",
        help="a BEIR folder: corpus.jsonl, queries.jsonl, qrels/test.tsv",
    )
    r.add_argument(
        "--modes", default="dense,bm25,hybrid", help="comma-separated: dense, bm25, hybrid"
    )
    r.add_argument("--embed-backend", default=None, help="torch, onnx or onnx-int8")
    r.add_argument("--batch-size", type=int, default=64, help="queries embedded together")
    r.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default eval/results/retrieval-<dataset>-<store>-<backend>.json)",
    )
    q = kinds.add_parser("qa", help="hit@1/5, SQuAD EM/F1 and citations on a SQuAD-format file")
    common(q)
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
    q.add_argument("--k", type=int, default=5, help="passages per question")
    q.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default=None)
    q.add_argument("--embed-backend", default=None, help="torch, onnx or onnx-int8")
    q.add_argument(
        "--out",
        type=Path,
        default=None,
        help="JSON result file (default eval/results/qa-<dataset>-<store>.json)",
    )
    EXTRA_COMMANDS["eval"] = _cmd_eval


def _cmd_eval(args: argparse.Namespace) -> int:
    from rag.cli import _settings

    if args.eval_kind == "retrieval":
        from eval.retrieval import MODES, markdown, run

        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        bad = [m for m in modes if m not in MODES]
        if bad:
            from rag.errors import ConfigError

            raise ConfigError(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
        settings = _settings(args, embed_backend=args.embed_backend)
        as_json = getattr(args, "json", False)
        result = run(
            args.dataset,
            settings,
            modes=modes,
            batch_size=args.batch_size,
            progress=not as_json and sys.stderr.isatty(),
        )
        out = args.out or RESULTS_DIR / (
            f"retrieval-{args.dataset.resolve().name}-{result['store']}-{result['embed_backend']}.json"
        )
        _write(out, result)
        print(
            json.dumps(result, indent=2)
            if as_json
            else markdown(result) + f"\n\n(written to {out})"
        )
        return 0
    if args.eval_kind == "qa":
        from eval.qa import GENERATORS, markdown, run
        from rag.errors import ConfigError

        names = [g.strip() for g in args.generators.split(",") if g.strip()]
        bad = [g for g in names if g not in GENERATORS]
        if bad:
            raise ConfigError(
                f"unknown generator(s) {', '.join(bad)}; choose from {', '.join(GENERATORS)}"
            )
        settings = _settings(args, embed_backend=args.embed_backend)
        as_json = getattr(args, "json", False)
        result = run(
            args.dataset,
            settings,
            generators=names,
            limit=args.limit or None,
            k=args.k,
            progress=not as_json and sys.stderr.isatty(),
        )
        out = args.out or RESULTS_DIR / f"qa-{args.dataset.stem}-{result['store']}.json"
        _write(out, result)
        print(
            json.dumps(result, indent=2)
            if as_json
            else markdown(result) + f"\n\n(written to {out})"
        )
        return 0
    raise AssertionError(args.eval_kind)


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
