"""``rag ingest``: bring a collection in line with files and folders (or another source)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

from rag import plugins
from rag.commands import (
    EXIT_PARTIAL,
    Command,
    add_collection_options,
    add_embedding_options,
    add_log_queries_option,
    add_recall_option,
    display_path,
    emit,
    printable,
    settings_from_args,
    wants_json,
)
from rag.errors import ConfigError


def _configure(p: argparse.ArgumentParser) -> None:
    add_collection_options(p)
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="files and folders (or the source's targets)"
    )
    p.add_argument(
        "--source",
        choices=plugins.names("sources"),
        default=None,
        help="the source plugin that reads PATH (default: the one that claims PATH, such as "
        "web for http(s) addresses, else filesystem)",
    )
    p.add_argument(
        "--source-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the source's own (repeatable); the flags below set the same",
    )
    _add_source_flags(p)
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
    add_embedding_options(p)
    add_log_queries_option(p)
    add_recall_option(p)
    p.add_argument("--max-file-mb", type=float, default=None, help="skip larger files (default 50)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.add_argument(
        "--watch",
        action="store_true",
        help="keep the collection in sync as files change (filesystem source only)",
    )
    _add_engine_options(p)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine options")
    g.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="where files are read, chunked and embedded: local (default, this process) or "
        "ray (a Ray cluster; this process still writes the store and the records)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDRESS",
        help="the Ray cluster: auto, HOST:PORT or ray://HOST:PORT (default RAY_ADDRESS, "
        "else a Ray started here for this ingest)",
    )
    g.add_argument(
        "--ray-workers",
        type=int,
        default=None,
        metavar="N",
        help="embedding actors (default: as many as the cluster's CPUs, or GPUs, allow)",
    )
    g.add_argument(
        "--ray-batch-size",
        type=int,
        default=None,
        metavar="N",
        help="files (source items) an actor reads, chunks and embeds at a time (default 16)",
    )
    g.add_argument(
        "--ray-num-cpus",
        type=float,
        default=None,
        metavar="N",
        help="CPUs each embedding actor reserves (default 1)",
    )
    g.add_argument(
        "--ray-num-gpus",
        type=float,
        default=None,
        metavar="N",
        help="GPUs each embedding actor reserves (default 0; needs --embed-backend torch)",
    )


def engine_from_args(args: argparse.Namespace) -> Any:
    """The engine the options name (``None``: the local pipeline), every ``--ray-*`` option
    given reaching it; a ``--ray-*`` option without ``--engine ray`` is an error."""
    ray_options = {
        "--ray-address": ("address", args.ray_address),
        "--ray-workers": ("workers", args.ray_workers),
        "--ray-batch-size": ("batch_size", args.ray_batch_size),
        "--ray-num-cpus": ("num_cpus", args.ray_num_cpus),
        "--ray-num-gpus": ("num_gpus", args.ray_num_gpus),
    }
    given = {flag: pair for flag, pair in ray_options.items() if pair[1] is not None}
    if args.engine != "ray":
        if given:
            raise ConfigError(f"{', '.join(given)} only apply with --engine ray")
        return None
    if args.watch:
        raise ConfigError("--watch runs here, as files change: leave out --engine ray")
    from connectors.ray_engine import RayEngine, RaySettings

    return RayEngine(RaySettings(**dict(given.values())))


#: The flags the installed sources declare: dest -> option name.
SOURCE_FLAG_PREFIX = "source_flag_"


def _add_source_flags(p: argparse.ArgumentParser) -> None:
    """One flag per option an installed source declares (``--depth`` for the web source's
    ``depth``), its help naming the sources that take it."""
    from rag.source import source_options

    declared: dict[str, list[tuple[str, str]]] = {}
    for name in plugins.names("sources"):
        plugin = plugins.get("sources", name)
        if not plugin.installed:
            continue
        try:
            cls = plugin.load()
        except Exception:  # reported when the source is used
            continue
        for option, text in source_options(cls).items():
            declared.setdefault(option, []).append((name, text))
    taken = {a for action in p._actions for a in action.option_strings}
    for option, users in sorted(declared.items()):
        flag = "--" + option.replace("_", "-")
        if flag in taken:
            continue
        names = ", ".join(n for n, _ in users)
        p.add_argument(
            flag,
            dest=SOURCE_FLAG_PREFIX + option,
            default=None,
            metavar="VALUE",
            help=f"[{names}] {users[0][1]}",
        )


def source_params(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The source options given: ``--source-opt KEY=VALUE`` pairs, then the source flags."""
    params = []
    for item in args.source_opt:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--source-opt takes KEY=VALUE, not {item!r}")
        params.append((key.strip().replace("-", "_"), value))
    for dest, value in sorted(vars(args).items()):
        if dest.startswith(SOURCE_FLAG_PREFIX) and value is not None:
            params.append((dest[len(SOURCE_FLAG_PREFIX) :], value))
    return params


def _run(args: argparse.Namespace) -> int:
    from rag.collection import open_collection
    from rag.source import pick_source

    settings = settings_from_args(args)
    params = source_params(args)
    if args.source is None:
        args.source = pick_source(args.paths)
    as_json = wants_json(args)
    show = not (args.quiet or as_json) and sys.stderr.isatty()
    if args.watch and args.source != "filesystem":
        raise ConfigError("--watch follows files and folders: it needs --source filesystem")
    if args.watch and params:
        raise ConfigError("--watch takes no source options")
    engine = engine_from_args(args)
    with open_collection(settings, create=True) as col, model_notes(not (args.quiet or as_json)):
        if args.watch:
            from apps.cli.watch import watch

            return watch(
                col,
                args.paths,
                include=args.include,
                exclude=args.exclude,
                cleanup=args.cleanup,
                as_json=as_json,
                quiet=args.quiet,
            )
        bar = ProgressBar() if show else None
        try:
            report = col.ingest(
                args.paths,
                source=args.source,
                include=args.include,
                exclude=args.exclude,
                cleanup=args.cleanup,
                progress=bar,
                params=params,
                engine=engine,
            )
        finally:
            if bar is not None:
                bar.close()
        out = report.to_json()
        out["collection"] = col.name
        out["store"] = settings.store
        if as_json:
            emit(out)
        else:
            _print_report(out)
    return EXIT_PARTIAL if report.failed else 0


#: Skipped files listed in the text report (a folder of images would fill the screen).
SHOW_SKIPPED = 20


def _print_report(r: dict) -> None:
    print(
        f"{r['collection']} ({r['store']}): {r['files']} files — {r['added']} added, "
        f"{r['updated']} updated, {r['unchanged']} unchanged, {r['deleted']} removed; "
        f"{r['chunks']} chunks written, {r['embedded']} texts embedded, "
        f"{r['total_chunks']} chunks in all ({r['seconds']:.1f} s{_model_time(r)})"
    )
    skipped = r["skipped"]
    for f in skipped[:SHOW_SKIPPED]:
        print(f"  skipped: {display_path(f['path'])}: {printable(f['reason'])}", file=sys.stderr)
    if len(skipped) > SHOW_SKIPPED:
        more = len(skipped) - SHOW_SKIPPED
        print(f"  ... and {more} more skipped (--json lists them all)", file=sys.stderr)
    for f in r["failed"]:
        print(f"  failed: {display_path(f['path'])}: {printable(f['reason'])}", file=sys.stderr)


def _model_time(r: dict) -> str:
    # Said only when it matters: an export on first use, a model slow to load.
    m = r.get("model_seconds", 0.0)
    return f", {m:.1f} s of it preparing the model" if m >= 1.0 else ""


class ProgressBar:
    """A tqdm bar over chunks (embedded of those known so far: the total grows while files
    are read), with files and embedding throughput beside it. Redrawn at most ten times a
    second; called from the ingest's threads one at a time."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._drawn = 0.0
        self._last: Any = None

    def __call__(self, p: Any) -> None:
        self._last = p
        now = time.monotonic()
        if self._bar is not None and now - self._drawn < 0.1:
            return
        self._drawn = now
        self._draw(p)

    def _draw(self, p: Any) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(
                total=p.chunks_total,
                unit="chunk",
                desc="ingest",
                file=sys.stderr,
                dynamic_ncols=True,
                leave=False,
            )
        self._bar.total = max(p.chunks_total, p.chunks)
        self._bar.n = p.chunks
        rate = p.embedded / p.embed_seconds if p.embed_seconds > 0 else 0.0
        self._bar.set_postfix_str(
            f"{p.files_done}/{p.files_total} files, {rate:.0f} texts/s"
            + (f", {p.failed} failed" if p.failed else ""),
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._draw(self._last)  # the last step, which the rate limit may have skipped
            self._bar.close()


class _Notes(logging.Handler):
    """Writes ``rag.embeddings``' messages (a model being exported) as lines on stderr,
    above a progress bar if one is drawn."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = printable(record.getMessage())
        except Exception:  # a malformed message: logging's own report, never a crash
            self.handleError(record)
            return
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)  # handle() holds the handler's lock
        sys.stderr.flush()


@contextlib.contextmanager
def model_notes(show: bool) -> Iterator[None]:
    """While it is open, what the embedding backends report on the ``rag.embeddings`` logger
    at INFO (an ONNX export on first use, and its duration) is shown on stderr; nothing
    where ``show`` is false (``--json``, ``--quiet``)."""
    if not show:
        yield
        return
    logger = logging.getLogger("rag.embeddings")
    handler, level, propagate = _Notes(), logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Not twice: a library may give the root logger a handler while it exports.
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


command = Command(
    help="add a folder or files to a collection (incremental)", configure=_configure, run=_run
)
