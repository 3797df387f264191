"""``rag collections``, ``rag status``, ``rag drop`` and ``rag migrate``."""

from __future__ import annotations

import argparse
import sys
import time

from rag.commands import (
    Command,
    add_collection_options,
    display_path,
    emit,
    printable,
    settings_from_args,
    wants_json,
)

# --- rag collections ---------------------------------------------------------------------------


def _configure_collections(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, collection=False, store=False)


def _run_collections(args: argparse.Namespace) -> int:
    from rag.manifest import list_collections

    infos = list_collections(settings_from_args(args))
    if wants_json(args):
        emit({"collections": [vars(i) for i in infos]})
        return 0
    if not infos:
        print("no collections yet: rag ingest PATH")
    for i in infos:
        print(
            f"{i.name:<24} {i.store:<9} {i.chunks:>8} chunks  {i.sources:>6} sources  "
            f"{printable(i.embed_model)} ({i.dim}d)"
        )
    return 0


collections = Command(
    help="list collections with their sizes",
    configure=_configure_collections,
    run=_run_collections,
)


# --- rag drop ----------------------------------------------------------------------------------


def _configure_drop(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, collection=False)
    p.add_argument("name", metavar="COLLECTION")


def _run_drop(args: argparse.Namespace) -> int:
    from rag.collection import drop_collection

    settings = settings_from_args(args)
    drop_collection(settings, args.name)
    if wants_json(args):
        emit({"dropped": args.name, "store": settings.store})
    else:
        print(f"dropped {args.name} ({settings.store})")
    return 0


drop = Command(help="delete a collection", configure=_configure_drop, run=_run_drop)


# --- rag status --------------------------------------------------------------------------------


def _configure_status(p: argparse.ArgumentParser) -> None:
    add_collection_options(p)
    p.add_argument("name", nargs="?", metavar="COLLECTION", help="instead of --collection")
    p.add_argument("--sources", action="store_true", help="list every source")


def _run_status(args: argparse.Namespace) -> int:
    from rag.collection import open_collection

    settings = settings_from_args(args)
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
    if wants_json(args):
        emit(st)
        return 0
    e, c, li = st["embedder"] or {}, st["chunker"] or {}, st["last_ingest"] or {}
    print(f"collection  {st['collection']} ({st['store']})")
    print(f"chunks      {st['chunks']} from {st['sources']} sources")
    print(
        f"embedder    {printable(str(e.get('model')))} [{e.get('backend')}], "
        f"{e.get('dim')} dimensions"
    )
    print(f"chunker     {c.get('chunk_size')} tokens, {c.get('chunk_overlap')} overlap")
    if st["embedder"] is not None:
        print(f"index       {_calibration_line(st)}")
    if li:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(li["time"]))
        print(
            f"last ingest {when}: {li.get('added', 0)} added, {li.get('updated', 0)} updated, "
            f"{li.get('deleted', 0)} removed, {li.get('failed', 0)} failed, "
            f"{li.get('seconds', 0)} s"
        )
    for s in st.get("source_list", []):
        interrupted = "" if s["committed"] else "  (interrupted)"
        print(f"  {s['chunks']:>5}  {display_path(s['source'])}{interrupted}")
    return 0


def _calibration_line(st: dict) -> str:
    """The store's choice for the recall target, with the options named over it."""
    from rag.store import store_class

    cal, named = st.get("calibration"), st["store_options"]
    over = ", ".join(f"{k}={v}" for k, v in sorted(named.items()))
    if cal is None:
        if not store_class(st["store"]).capabilities.calibrate:
            what = f"the {st['store']} store does not choose its index from a recall target"
        else:
            what = "no recall target applied yet (the next ingest chooses)"
        return printable(what + (f"; options {over}" if over else ""))
    chosen = ", ".join(f"{k}={v}" for k, v in sorted(cal["options"].items())) or (
        "the options named" if cal.get("fixed") else "the store's own settings"
    )
    measured = (
        f"recall@{cal['k']} {cal['recall']:.3f} on {cal['queries']} of its own vectors"
        if cal["queries"]
        else "exact"
    )
    line = (
        f"{chosen} for recall {cal['target']} at {cal['count']} chunks: {measured} "
        f"({cal['note']}, {cal['seconds']:.1f} s)"
    )
    return printable(line + (f"; named over it: {over}" if over else ""))


status = Command(
    help="counts, sources, embedder and last ingest of a collection",
    configure=_configure_status,
    run=_run_status,
)


# --- rag migrate -------------------------------------------------------------------------------


def _configure_migrate(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, store=False)
    p.add_argument("--from", dest="from_store", required=True, metavar="STORE")
    p.add_argument(
        "--from-url", default=None, help="server of the source store (default: its embedded engine)"
    )
    p.add_argument("--to", dest="to_store", required=True, metavar="STORE")
    p.add_argument("--to-url", default=None, help="server of the target store")
    p.add_argument(
        "--store-opt",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="an option of the target store, e.g. index=hnsw (repeatable)",
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")


def _run_migrate(args: argparse.Namespace) -> int:
    from rag.migrate import migrate

    settings = settings_from_args(args, store_url=args.from_url)
    show = not (args.quiet or wants_json(args)) and sys.stderr.isatty()
    result = migrate(
        settings,
        source_store=args.from_store,
        target_store=args.to_store,
        target_url=args.to_url,
        batch_size=args.batch_size,
        progress=show,
    )
    if wants_json(args):
        emit(result)
    else:
        print(
            f"migrated {result['collection']}: {result['copied']} chunks from {result['from']} "
            f"to {result['to']} in {result['seconds']:.1f} s (counts verified: "
            f"{result['source_count']} = {result['target_count']})"
        )
    return 0


migrate = Command(
    help="copy a collection to another store without re-embedding",
    configure=_configure_migrate,
    run=_run_migrate,
)
