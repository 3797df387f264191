"""``rag search``, ``rag ask`` and ``rag chat``: questions to a collection."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from rag.commands import (
    Command,
    add_collection_options,
    add_generation_options,
    add_retrieval_options,
    display_path,
    emit,
    printable,
    settings_from_args,
    wants_json,
)
from rag.errors import ConfigError


def parse_where(text: str | None) -> Any:
    """``--where`` parsed, reported before anything is opened when malformed, with the paths
    this command prints accepted as they are shown: a ``source`` compared with a relative
    path (``data/guide.md``, as search results show it) also matches the absolute path the
    collection records."""
    from rag.filters import And, Comparison, Not, Or, parse

    def shown(flt: Any) -> Any:
        if isinstance(flt, And | Or):
            return type(flt)(tuple(shown(f) for f in flt.items))
        if isinstance(flt, Not):
            return Not(shown(flt.item))
        if flt.field != "source" or flt.op not in ("$eq", "$ne", "$in", "$nin"):
            return flt
        values = flt.value if isinstance(flt.value, tuple) else (flt.value,)
        extra = tuple(
            os.path.abspath(v)
            for v in values
            if isinstance(v, str) and v and not os.path.isabs(v) and "://" not in v
        )
        if not extra:
            return flt
        op = {"$eq": "$in", "$ne": "$nin"}.get(flt.op, flt.op)
        return Comparison("source", op, values + extra)

    flt = parse(text)
    return None if flt is None else shown(flt)


def _not_empty(text: str, what: str) -> None:
    if not text.strip():
        raise ConfigError(f"the {what} is empty: say what to look for")


def _where(meta: dict) -> str:
    parts = []
    if "page" in meta:
        parts.append(f"page {meta['page']}")
    if meta.get("heading"):
        parts.append(str(meta["heading"]))
    return printable(f" ({'; '.join(parts)})") if parts else ""


# --- rag search --------------------------------------------------------------------------------


def _configure_search(p: argparse.ArgumentParser) -> None:
    add_collection_options(p)
    p.add_argument("query")
    add_retrieval_options(p)


def _run_search(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    where = parse_where(args.where)
    _not_empty(args.query, "query")
    with open_collection(settings_from_args(args)) as col:
        hits = col.search(args.query, where=where, mmr=args.mmr)
    if wants_json(args):
        emit({"query": args.query, "hits": [h.to_json() for h in hits]})
        return 0
    if not hits:
        print("no matching passages")
    for n, h in enumerate(hits, 1):
        print(f"[{n}] {h.score:.3f}  {display_path(h.chunk.source)}{_where(h.chunk.metadata)}")
        text = " ".join(h.chunk.text.split())
        print(f"    {printable(text[:300])}{'…' if len(text) > 300 else ''}")
    return 0


search = Command(
    help="the passages that best match a query", configure=_configure_search, run=_run_search
)


# --- rag ask -----------------------------------------------------------------------------------


def _configure_ask(p: argparse.ArgumentParser) -> None:
    add_collection_options(p)
    p.add_argument("question")
    add_retrieval_options(p)
    add_generation_options(p)


def _run_ask(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    as_json = wants_json(args)
    where = parse_where(args.where)
    _not_empty(args.question, "question")
    with open_collection(settings_from_args(args)) as col:
        stream = None if as_json else _stdout_token
        result = col.ask(args.question, where=where, mmr=args.mmr, on_token=stream)
    if as_json:
        emit(result.to_json())
        return 0
    print()
    _print_sources(result)
    return 0


ask = Command(
    help="answer a question from the collection, with citations",
    configure=_configure_ask,
    run=_run_ask,
)


def _stdout_token(token: str) -> None:
    sys.stdout.write(printable(token))
    sys.stdout.flush()


def _print_sources(result: Any) -> None:
    from rag.generation.grounding import describe

    if result.attributed:
        # The answer was streamed as the model wrote it: say which passages ragkit matched
        # it to, rather than print it a second time.
        marks = ", ".join(f"[{n}]" for n in result.citations)
        print(f"\n(The model cited no passage; ragkit matched its sentences to {marks}.)")
    note = describe(result.grounding, result.removed)
    if note and result.grounding != "grounded":
        print(f"\n({note})")
    if result.sources:
        print("\nSources:")
        for n, h in enumerate(result.sources, 1):
            mark = "*" if n in result.citations else " "
            print(f" {mark}[{n}] {display_path(h.chunk.source)}{_where(h.chunk.metadata)}")
    if result.left_out:
        more = f"{result.left_out} more passage" + (" was" if result.left_out == 1 else "s were")
        print(f"   ({more} retrieved but left out: beyond the model's context)")
    if result.route:
        print(f"\nRoute: {printable(result.route)} ({printable(result.route_reason)})")
    t = result.timings
    checked = f", {result.grounding}" if result.grounding == "grounded" else ""
    print(
        f"\n— {result.generator}: {printable(result.model)}{checked} "
        f"(retrieval {t.get('retrieve', 0):.2f} s, "
        f"generation {t.get('generate', 0):.2f} s)"
    )


# --- rag chat ----------------------------------------------------------------------------------


def _configure_chat(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, json_output=False)
    add_retrieval_options(p)
    add_generation_options(p)


def _run_chat(args: argparse.Namespace) -> int:
    from rag.collection import open_collection
    from rag.errors import RouteRefused
    from rag.generation import load_generator
    from rag.routing import router_for

    settings = settings_from_args(args)
    where = parse_where(args.where)
    history: list[tuple[str, str]] = []
    with open_collection(settings) as col:
        # With a routes file each answer's generator is chosen per question (rag.routing).
        router = router_for(col)
        gen = None if router else load_generator(settings, embed=col.embedder.embed)
        using = f"{gen.name}: {gen.model}" if gen else f"routed by {router.path.name}"
        print(f"Chatting with {col.name!r} ({using}). /new starts over, /exit or Ctrl-D leaves.")
        while True:
            try:
                question = input("\nyou> ").strip()
            except EOFError:
                print()
                return 0
            if not question:
                continue
            if question in ("/exit", "/quit"):
                return 0
            if question == "/new":
                history.clear()
                print("(new conversation)")
                continue
            sys.stdout.write("rag> ")
            try:
                result = col.ask(
                    question,
                    where=where,
                    mmr=args.mmr,
                    history=history,
                    generator=gen,
                    on_token=_stdout_token,
                )
            except RouteRefused as e:  # one question refused; the conversation goes on
                print(f"({printable(str(e))})")
                continue
            print()
            if history or result.query != question:  # a follow-up: say what was searched
                print(f"(searched for: {printable(result.query)})")
            _print_sources(result)
            history.append((question, result.text))


chat = Command(help="a conversation in the terminal", configure=_configure_chat, run=_run_chat)
