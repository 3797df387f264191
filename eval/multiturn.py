"""Follow-up questions: does the follow-up's query find its gold source in the top k?

Each line of ``eval/data/multiturn.jsonl`` is a two-turn conversation over the sample
corpus (``data/*.md``): a first (question, answer) turn, a follow-up that needs it ("and
how do I change it?"), and the file that answers the follow-up. For each conversation the
follow-up is searched for as:

* ``none``: the follow-up alone (no rewrite);
* ``local raw``: the local model's own rewrite (``LocalGenerator.rewrite_question``);
* ``standalone local`` / ``standalone extractive``: :func:`rag.generation.rewrite.standalone`
  with that generator (the extractive generator has no LLM: always the deterministic
  rewrite), each with both deterministic rewrites: ``(merge)``, the follow-up plus the
  previous question's words (the default), and ``(join)``, the two questions whole.

The table gives how often the gold source is in the top ``k`` and how often it is first.

    .venv/bin/rag --data-dir /tmp/mt ingest data/
    python -m eval.multiturn --data-dir /tmp/mt

or in one step (``rag eval multiturn`` ingests the sample corpus first, incrementally):

    rag eval multiturn --data-dir /tmp/mt
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rag.collection import open_collection
from rag.config import Settings
from rag.generation import load_generator
from rag.generation.rewrite import standalone

DATA = Path(__file__).parent / "data" / "multiturn.jsonl"
#: The sample corpus the conversations are about (a source checkout's data/ folder).
CORPUS = Path(__file__).resolve().parent.parent / "data"


def load(path: Path = DATA) -> list[dict[str, Any]]:
    """The conversations: ``id``, ``history`` ([question, answer] pairs), ``question`` (the
    follow-up) and ``source`` (the file name that answers it)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            row["history"] = [tuple(turn) for turn in row["history"]]
            rows.append(row)
    return rows


def run(
    settings: Settings, *, k: int = 5, local: bool = True, corpus: Path | None = None
) -> dict[str, Any]:
    """Hit rate of the gold source in the top ``k`` for each way of making the query, in
    the collection of ``settings``; ``corpus`` (the sample corpus, :data:`CORPUS`) is
    ingested into it first when given (a second run embeds nothing)."""
    convs = load()
    with open_collection(settings, create=corpus is not None) as col:
        if corpus is not None:
            col.ingest([corpus])
        extractive = load_generator(
            settings.with_(generator="extractive"), embed=col.embedder.embed
        )
        methods: dict[str, Callable[[str, Sequence[tuple[str, str]]], tuple[str, str]]] = {
            "none": lambda q, h: (q, "none"),
            "standalone extractive (join)": lambda q, h: standalone(
                q, h, extractive, fallback="join"
            ),
            "standalone extractive (merge)": lambda q, h: standalone(
                q, h, extractive, fallback="merge"
            ),
        }
        llm_seconds = [0.0]  # LLM time charged to the method that asked for a rewrite
        if local:
            gen = load_generator(settings.with_(generator="local"), embed=col.embedder.embed)
            raw: dict[str, tuple[str, float]] = {}

            class _Cached:  # one LLM rewrite per conversation, shared by the methods
                def rewrite_question(self, q: str, h: Sequence[tuple[str, str]]) -> str:
                    if q not in raw:
                        t0 = time.perf_counter()
                        raw[q] = (gen.rewrite_question(q, h), time.perf_counter() - t0)
                    llm_seconds[0] += raw[q][1]
                    return raw[q][0]

            cached = _Cached()
            methods["local raw"] = lambda q, h: (cached.rewrite_question(q, h), "llm raw")
            methods["standalone local (join)"] = lambda q, h: standalone(
                q, h, cached, fallback="join"
            )
            methods["standalone local (merge)"] = lambda q, h: standalone(
                q, h, cached, fallback="merge"
            )
        out: dict[str, Any] = {"conversations": len(convs), "k": k, "methods": {}, "rows": []}
        for name, method in methods.items():
            hits, firsts, hows, seconds = 0, 0, {}, 0.0
            for conv in convs:
                llm_seconds[0] = 0.0
                t0 = time.perf_counter()
                query, how = method(conv["question"], conv["history"])
                elapsed = time.perf_counter() - t0
                # A cached LLM rewrite costs nothing here: charge the time it took.
                seconds += max(elapsed, llm_seconds[0])
                found = [Path(h.chunk.source).name for h in col.search(query, k=k)]
                ok = conv["source"] in found
                hits += ok
                firsts += bool(found) and found[0] == conv["source"]
                hows[how] = hows.get(how, 0) + 1
                out["rows"].append(
                    {"id": conv["id"], "method": name, "query": query, "how": how, "hit": ok}
                )
            out["methods"][name] = {
                "hit": hits / len(convs),
                "hits": hits,
                "top1": firsts,
                "how": hows,
                "seconds": seconds,
            }
    return out


def markdown(result: dict[str, Any]) -> str:
    k, n = result["k"], result["conversations"]
    lines = [
        f"| query for the follow-up | gold source in top {k} | first | how the query was made | "
        "rewrite time (s, all) |",
        "|---|---|---|---|---|",
    ]
    for name, m in result["methods"].items():
        how = ", ".join(f"{key} {v}" for key, v in sorted(m["how"].items()))
        lines.append(
            f"| {name} | {m['hits']}/{n} ({m['hit']:.0%}) | {m['top1']}/{n} | {how} "
            f"| {m['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m eval.multiturn", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="where data/ was ingested")
    p.add_argument("--collection", default="default")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--mode", choices=("dense", "bm25", "hybrid"), default="dense")
    p.add_argument("--no-local", action="store_true", help="skip the local model's rewrites")
    p.add_argument("--misses", action="store_true", help="also print each query that missed")
    p.add_argument("--json", type=Path, help="write the full result (every query) here")
    args = p.parse_args(argv)
    settings = Settings(data_dir=args.data_dir, collection=args.collection, mode=args.mode)
    result = run(settings, k=args.k, local=not args.no_local)
    print(markdown(result))
    if args.misses:
        for row in result["rows"]:
            if not row["hit"]:
                print(f"miss  {row['method']:<30} {row['id']:<20} {row['query']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
