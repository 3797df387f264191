"""The ``rag`` command.

Errors print one line on stderr and exit 1 (2 for bad usage); ``--debug`` shows the
traceback. ``rag ingest`` exits 3 when it finished but some files could not be read.
Heavy packages are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from typing import Any

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3


def _common(p: argparse.ArgumentParser) -> None:
    # Defaults are SUPPRESS so that an option given before the command is not overwritten
    # by the subcommand's default.
    s = argparse.SUPPRESS
    g = p.add_argument_group("common options")
    g.add_argument(
        "--data-dir", default=s, help="where collections live (default .rag, or RAG_DATA_DIR)"
    )
    g.add_argument(
        "--collection",
        "-c",
        default=s,
        help="collection name (default 'default', or RAG_COLLECTION)",
    )
    g.add_argument(
        "--store",
        default=s,
        help="vector store: faiss, chroma, qdrant, pgvector (default faiss, or RAG_STORE)",
    )
    g.add_argument(
        "--store-url", default=s, help="a server for the store (Chroma/Qdrant URL, PostgreSQL DSN)"
    )
    g.add_argument(
        "--store-opt",
        action="append",
        default=s,
        metavar="KEY=VALUE",
        help="a backend option, e.g. index=hnsw (repeatable)",
    )
    g.add_argument("--json", action="store_true", default=s, help="print one JSON object")
    g.add_argument(
        "--debug", action="store_true", default=s, help="show tracebacks and library warnings"
    )


def _retrieval(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--k", "-k", type=int, default=None, help="how many passages (default 5, or RAG_K)"
    )
    p.add_argument(
        "--where",
        default=None,
        metavar="JSON",
        help='metadata filter, e.g. \'{"file_type": "pdf", "page": {"$gte": 2}}\'',
    )
    p.add_argument(
        "--mode",
        choices=("dense", "bm25", "hybrid"),
        default=None,
        help="dense (default), bm25 or hybrid (both, fused)",
    )
    p.add_argument("--mmr", action="store_true", help="re-rank the passages for diversity")
    p.add_argument(
        "--mmr-lambda",
        type=float,
        default=None,
        help="MMR trade-off, 1 = relevance only, 0 = diversity only (default 0.5)",
    )
    p.add_argument(
        "--fusion",
        choices=("rrf", "weighted"),
        default=None,
        help="how hybrid fuses: reciprocal rank fusion (default) or weighted scores",
    )
    p.add_argument(
        "--rrf-k", type=int, default=None, help="RRF's k: each rank r adds 1/(k + r) (default 60)"
    )
    p.add_argument(
        "--weight",
        type=float,
        default=None,
        help="weighted fusion: share of the dense score, 0..1 (default 0.5)",
    )
    p.add_argument(
        "--rerank",
        default=None,
        metavar="MODEL",
        help="re-rank with a cross-encoder you have (a local folder); none ships with ragkit",
    )


def _generation(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--generator",
        choices=("auto", "local", "openai", "extractive"),
        default=None,
        help="auto (default): openai when OPENAI_BASE_URL/OPENAI_API_KEY is set, else local",
    )
    p.add_argument(
        "--llm-model",
        default=None,
        help="model name at the OpenAI-compatible endpoint (RAG_LLM_MODEL)",
    )
    p.add_argument(
        "--local-model", default=None, help="a GGUF file for the local generator (RAG_LOCAL_MODEL)"
    )
    p.add_argument("--max-tokens", type=int, default=None, help="longest answer, in tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag",
        description="Ingest documents, search them and ask questions about them, offline.",
    )
    _common(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", help="add a folder or files to a collection (incremental)")
    _common(p)
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="only files matching (repeatable)",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="skip files matching (repeatable)",
    )
    p.add_argument(
        "--cleanup",
        choices=("full", "per-source", "none"),
        default="full",
        help="full (default): also remove files gone from PATH; per-source: only replace "
        "changed files; none: only add",
    )
    p.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default 200)")
    p.add_argument(
        "--chunk-overlap", type=int, default=None, help="tokens shared by neighbours (default 32)"
    )
    p.add_argument("--embed-model", default=None, help="sentence-transformers model name or path")
    p.add_argument("--embed-backend", default=None, help="torch, onnx or onnx-int8")
    p.add_argument("--max-file-mb", type=float, default=None, help="skip larger files (default 50)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--watch", action="store_true", help="keep the collection in sync as files change"
    )

    p = sub.add_parser("search", help="the passages that best match a query")
    _common(p)
    p.add_argument("query")
    _retrieval(p)

    p = sub.add_parser("ask", help="answer a question from the collection, with citations")
    _common(p)
    p.add_argument("question")
    _retrieval(p)
    _generation(p)

    p = sub.add_parser("chat", help="a conversation in the terminal")
    _common(p)
    _retrieval(p)
    _generation(p)

    p = sub.add_parser("collections", help="list collections with their sizes")
    _common(p)

    p = sub.add_parser("drop", help="delete a collection")
    _common(p)
    p.add_argument("name", metavar="COLLECTION")

    p = sub.add_parser("status", help="counts, sources, embedder and last ingest of a collection")
    _common(p)
    p.add_argument("name", nargs="?", metavar="COLLECTION")
    p.add_argument("--sources", action="store_true", help="list every source")

    p = sub.add_parser("stores", help="list vector store backends and whether they are installed")
    _common(p)

    p = sub.add_parser("migrate", help="copy a collection to another store without re-embedding")
    _common(p)
    p.add_argument("--from", dest="from_store", required=True, metavar="STORE")
    p.add_argument("--to", dest="to_store", required=True, metavar="STORE")
    p.add_argument("--to-url", default=None, help="server of the target store")
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    from rag.cli_extra import add_extra_commands

    add_extra_commands(sub, _common)
    return parser


def _settings(args: argparse.Namespace, **extra: Any) -> Any:
    from rag.config import Settings
    from rag.errors import ConfigError

    options: dict[str, str] = {}
    for item in getattr(args, "store_opt", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--store-opt takes KEY=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    return Settings.from_env(
        data_dir=getattr(args, "data_dir", None),
        collection=getattr(args, "collection", None),
        store=getattr(args, "store", None),
        store_url=getattr(args, "store_url", None),
        store_options=options or None,
        k=getattr(args, "k", None),
        mode=getattr(args, "mode", None),
        generator=getattr(args, "generator", None),
        llm_model=getattr(args, "llm_model", None),
        local_model=getattr(args, "local_model", None),
        max_tokens=getattr(args, "max_tokens", None),
        mmr_lambda=getattr(args, "mmr_lambda", None),
        fusion=getattr(args, "fusion", None),
        rrf_k=getattr(args, "rrf_k", None),
        fusion_weight=getattr(args, "weight", None),
        rerank_model=getattr(args, "rerank", None),
        **extra,
    )


def _emit(obj: Any) -> None:
    print(json.dumps(obj, ensure_ascii=False, indent=2))


def _display_path(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def _where(hit_meta: dict) -> str:
    parts = []
    if "page" in hit_meta:
        parts.append(f"page {hit_meta['page']}")
    if hit_meta.get("heading"):
        parts.append(str(hit_meta["heading"]))
    return f" ({'; '.join(parts)})" if parts else ""


# --- commands ---------------------------------------------------------------------------------


def cmd_ingest(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    settings = _settings(
        args,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        embed_model=args.embed_model,
        embed_backend=args.embed_backend,
        max_file_mb=args.max_file_mb,
    )
    show = not (args.quiet or getattr(args, "json", False)) and sys.stderr.isatty()
    with open_collection(settings, create=True) as col:
        if args.watch:
            from rag.watch import watch

            return watch(
                col,
                args.paths,
                include=args.include,
                exclude=args.exclude,
                as_json=getattr(args, "json", False),
                quiet=args.quiet,
            )
        bar = _ProgressBar() if show else None
        try:
            report = col.ingest(
                args.paths,
                include=args.include,
                exclude=args.exclude,
                cleanup=args.cleanup,
                progress=bar,
            )
        finally:
            if bar is not None:
                bar.close()
        out = report.to_json()
        out["collection"] = col.name
        out["store"] = settings.store
        if getattr(args, "json", False):
            _emit(out)
        else:
            _print_ingest(out)
    return EXIT_PARTIAL if report.failed else 0


def _print_ingest(r: dict) -> None:
    print(
        f"{r['collection']} ({r['store']}): {r['files']} files — {r['added']} added, {r['updated']} updated, "
        f"{r['unchanged']} unchanged, {r['deleted']} removed; {r['chunks']} chunks written, "
        f"{r['embedded']} texts embedded, {r['total_chunks']} chunks in all ({r['seconds']:.1f} s)"
    )
    for f in r["failed"]:
        print(f"  failed: {_display_path(f['path'])}: {f['reason']}", file=sys.stderr)


class _ProgressBar:
    """A tqdm bar over files, showing chunks and embedding throughput."""

    def __init__(self) -> None:
        self._bar: Any = None

    def __call__(self, p: Any) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=p.files_total,
                unit="file",
                desc="ingest",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )
        self._bar.n = p.files_done
        rate = p.embedded / p.embed_seconds if p.embed_seconds > 0 else 0.0
        self._bar.set_postfix_str(
            f"{p.chunks} chunks, {rate:.0f} texts/s" + (f", {p.failed} failed" if p.failed else "")
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def cmd_search(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    settings = _settings(args)
    with open_collection(settings) as col:
        hits = col.search(args.query, where=args.where, mmr=args.mmr)
    if getattr(args, "json", False):
        _emit({"query": args.query, "hits": [h.to_json() for h in hits]})
        return 0
    if not hits:
        print("no matching passages")
    for n, h in enumerate(hits, 1):
        meta = h.chunk.metadata
        print(f"[{n}] {h.score:.3f}  {_display_path(h.chunk.source)}{_where(meta)}")
        text = " ".join(h.chunk.text.split())
        print(f"    {text[:300]}{'…' if len(text) > 300 else ''}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    settings = _settings(args)
    as_json = getattr(args, "json", False)
    with open_collection(settings) as col:
        stream = None if as_json else _stdout_token
        result = col.ask(args.question, where=args.where, mmr=args.mmr, on_token=stream)
    if as_json:
        _emit(result.to_json())
        return 0
    print()
    _print_sources(result)
    return 0


def _stdout_token(token: str) -> None:
    sys.stdout.write(token)
    sys.stdout.flush()


def _print_sources(result: Any) -> None:
    if result.attributed:
        print(f"\n(The model cited no passage; ragkit matched the answer to them: {result.text})")
    if result.sources:
        print("\nSources:")
        for n, h in enumerate(result.sources, 1):
            mark = "*" if n in result.citations else " "
            print(f" {mark}[{n}] {_display_path(h.chunk.source)}{_where(h.chunk.metadata)}")
    t = result.timings
    print(
        f"\n— {result.generator}: {result.model} (retrieval {t.get('retrieve', 0):.2f} s, "
        f"generation {t.get('generate', 0):.2f} s)"
    )


def cmd_chat(args: argparse.Namespace) -> int:
    from rag.collection import open_collection
    from rag.generation import load_generator

    settings = _settings(args)
    history: list[tuple[str, str]] = []
    with open_collection(settings) as col:
        gen = load_generator(settings, embed=col.embedder.embed)
        print(
            f"Chatting with {col.name!r} ({gen.name}: {gen.model}). /new starts over, /exit or Ctrl-D leaves."
        )
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
            result = col.ask(
                question,
                where=args.where,
                mmr=args.mmr,
                history=history,
                generator=gen,
                on_token=_stdout_token,
            )
            print()
            if result.query != question:
                print(f"(searched for: {result.query})")
            _print_sources(result)
            history.append((question, result.text))


def cmd_collections(args: argparse.Namespace) -> int:
    from rag.collection import list_collections

    infos = list_collections(_settings(args))
    if getattr(args, "json", False):
        _emit({"collections": [vars(i) for i in infos]})
        return 0
    if not infos:
        print("no collections yet: rag ingest PATH")
    for i in infos:
        print(
            f"{i.name:<24} {i.store:<9} {i.chunks:>8} chunks  {i.sources:>6} sources  {i.embed_model} ({i.dim}d)"
        )
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    from rag.collection import drop_collection

    settings = _settings(args)
    drop_collection(settings, args.name)
    if getattr(args, "json", False):
        _emit({"dropped": args.name, "store": settings.store})
    else:
        print(f"dropped {args.name} ({settings.store})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    settings = _settings(args)
    if args.name:
        settings = settings.with_(collection=args.name)
    with open_collection(settings) as col:
        st = col.status()
        if args.sources:
            st["source_list"] = [
                {
                    "source": r.source,
                    "chunks": len(r.chunk_ids),
                    "mtime": r.mtime,
                    "committed": r.committed,
                }
                for r in col.records.all()
            ]
    if getattr(args, "json", False):
        _emit(st)
        return 0
    e, c, li = st["embedder"] or {}, st["chunker"] or {}, st["last_ingest"] or {}
    print(f"collection  {st['collection']} ({st['store']})")
    print(f"chunks      {st['chunks']} from {st['sources']} sources")
    print(f"embedder    {e.get('model')} [{e.get('backend')}], {e.get('dim')} dimensions")
    print(f"chunker     {c.get('chunk_size')} tokens, {c.get('chunk_overlap')} overlap")
    if li:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(li["time"]))
        print(
            f"last ingest {when}: {li.get('added', 0)} added, {li.get('updated', 0)} updated, "
            f"{li.get('deleted', 0)} removed, {li.get('failed', 0)} failed, {li.get('seconds', 0)} s"
        )
    for s in st.get("source_list", []):
        print(
            f"  {s['chunks']:>5}  {_display_path(s['source'])}{'' if s['committed'] else '  (interrupted)'}"
        )
    return 0


def cmd_stores(args: argparse.Namespace) -> int:
    from vectorstores.registry import backends

    rows = []
    for b in backends().values():
        missing = b.missing()
        rows.append(
            {
                "name": b.name,
                "installed": not missing,
                "description": b.description,
                "install": None if not missing else f"pip install 'ragkit[{b.extra}]'",
            }
        )
    if getattr(args, "json", False):
        _emit({"stores": rows})
        return 0
    for r in rows:
        state = "installed" if r["installed"] else f"missing: {r['install']}"
        print(f"{r['name']:<10} {state:<12} {r['description']}")
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from rag.migrate import migrate

    settings = _settings(args)
    show = not (args.quiet or getattr(args, "json", False)) and sys.stderr.isatty()
    result = migrate(
        settings,
        source_store=args.from_store,
        target_store=args.to_store,
        target_url=args.to_url,
        batch_size=args.batch_size,
        progress=show,
    )
    if getattr(args, "json", False):
        _emit(result)
    else:
        print(
            f"migrated {result['collection']}: {result['copied']} chunks from {result['from']} to "
            f"{result['to']} in {result['seconds']:.1f} s (counts verified: {result['source_count']} = "
            f"{result['target_count']})"
        )
    return 0


COMMANDS = {
    "ingest": cmd_ingest,
    "search": cmd_search,
    "ask": cmd_ask,
    "chat": cmd_chat,
    "collections": cmd_collections,
    "drop": cmd_drop,
    "status": cmd_status,
    "stores": cmd_stores,
    "migrate": cmd_migrate,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # `rag bench` hands its arguments to eval.bench's own parser; everything else is strict.
    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":
        args.bench_args = [*extra, *args.bench_args]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    debug = getattr(args, "debug", False)
    if not debug:
        warnings.filterwarnings("ignore")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from rag.cli_extra import EXTRA_COMMANDS
    from rag.errors import RagError

    handler = COMMANDS.get(args.command) or EXTRA_COMMANDS[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        print("\nrag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`rag ... | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_ERROR
    except RagError as e:
        if debug:
            raise
        print(f"rag: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # anything else is a bug or an environment problem
        if debug:
            raise
        print(
            f"rag: unexpected error: {type(e).__name__}: {e} (run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
