"""``rag monitor``: a collection's health from its query log, and its baseline.

    rag monitor [COLLECTION] [--window 1h|1d|500|all] [--json]
    rag monitor baseline [COLLECTION] [--window ...] [--queries-only]
    rag monitor [COLLECTION] --log-queries none|vector|text|off

The report states each signal (latency per stage, capacity, errors, empty and
out-of-coverage searches, uncited answers, drift) as ok, watch or alert and why
(:mod:`rag.monitoring.report`). ``baseline`` takes a new corpus reference (k-means
centroids and the low-score threshold) and takes the window's queries as the query
reference. ``--log-queries`` sets what the collection's query log keeps from now on.
"""

from __future__ import annotations

import argparse

from rag.commands import (
    EXIT_ERROR,
    Command,
    add_collection_options,
    add_log_queries_option,
    emit,
    printable,
    settings_from_args,
    wants_json,
)
from rag.errors import ConfigError


def _configure(p: argparse.ArgumentParser) -> None:
    add_collection_options(p)
    p.add_argument(
        "target",
        nargs="*",
        metavar="[baseline] [COLLECTION]",
        help="the collection (default: --collection); 'baseline' first takes a new baseline",
    )
    p.add_argument(
        "--window",
        default="1d",
        help="what to read: a time (30m, 1h, 1d, 2w), a number of queries (500), or all "
        "(default 1d)",
    )
    p.add_argument(
        "--queries-only",
        action="store_true",
        help="baseline: keep the corpus reference, take only the window's queries",
    )
    p.add_argument(
        "--fail-on",
        choices=("watch", "alert"),
        default=None,
        help="exit with status 1 when the report's state is this or worse (for cron or CI)",
    )
    add_log_queries_option(p)
    g = p.add_argument_group("thresholds")
    g.add_argument("--latency-factor", type=float, default=2.0, help="P95 over N x baseline (2)")
    g.add_argument(
        "--capacity", type=float, default=0.8, help="capacity under this share of baseline (0.8)"
    )
    g.add_argument("--error-rate", type=float, default=0.01, help="errors over this share (0.01)")
    g.add_argument(
        "--anomaly-rate",
        type=float,
        default=0.05,
        help="empty, out-of-coverage or uncited over this share (0.05)",
    )
    g.add_argument("--psi-watch", type=float, default=0.1, help="drift PSI to watch (0.1)")
    g.add_argument("--psi-alert", type=float, default=0.2, help="drift PSI to alert (0.2)")
    g.add_argument(
        "--reference-queries",
        type=int,
        default=200,
        help="without a baseline, the first N queries are the reference (200)",
    )
    g.add_argument("--min-queries", type=int, default=30, help="fewer queries are not judged (30)")


def _run(args: argparse.Namespace) -> int:
    from rag.collection import open_collection
    from rag.monitoring import (
        FILE_NAME,
        Thresholds,
        Window,
        build_report,
        open_query_log,
        take_baseline,
    )

    target = list(args.target)
    action = "report"
    if target and target[0] == "baseline":
        action, target = "baseline", target[1:]
    if len(target) > 1:
        raise ConfigError(f"one collection at a time, got {', '.join(target)}")
    if args.queries_only and action != "baseline":
        raise ConfigError("--queries-only goes with `rag monitor baseline`")
    settings = settings_from_args(args)
    if target:
        settings = settings.with_(collection=target[0])
    thresholds = Thresholds(
        latency_factor=args.latency_factor,
        capacity_share=args.capacity,
        error_rate=args.error_rate,
        anomaly_rate=args.anomaly_rate,
        psi_watch=args.psi_watch,
        psi_alert=args.psi_alert,
        reference_queries=args.reference_queries,
        min_queries=args.min_queries,
    )
    window = Window.parse(args.window)
    with open_collection(settings) as col:
        if col.manifest is None:
            raise ConfigError(f"collection {col.name!r} has nothing in it yet: rag ingest PATH")
        # Opening the log saves --log-queries with the collection (Collection.querylog).
        log = col.querylog or open_query_log(col.path / FILE_NAME)
        done = None
        if action == "baseline":
            full = not args.queries_only
            done = take_baseline(
                log,
                events=window.events(log),
                min_queries=thresholds.min_queries,
                store=col.store if full else None,
                embed=col.embedder.embed if full else None,
                embed_model=col.embed_model,
            )
        report = build_report(log, collection=col.name, window=window, thresholds=thresholds)
    if wants_json(args):
        emit({"report": report.to_json(), **({"baseline": done} if done is not None else {})})
    else:
        if done is not None:
            _print_baseline(done)
        print(printable(report.to_text()))
    order = ("watch", "alert")
    if args.fail_on and report.state in order[order.index(args.fail_on) :]:
        return EXIT_ERROR
    return 0


def _print_baseline(done: dict) -> None:
    ref, qref = done["corpus_reference"], done["query_reference"]
    if ref is not None:
        threshold = "none" if ref["threshold"] is None else f"{ref['threshold']:.3f}"
        print(
            f"corpus reference {ref['id']}: {ref['k']} centroids over "
            f"{sum(ref['corpus_counts'])} chunks, low-score threshold {threshold}"
        )
    if qref is not None:
        print(f"query reference: {qref['queries']} queries from the window")
    else:
        print(
            f"query reference: {done['usable_queries']} usable queries in the window, too few "
            "(a new corpus reference needs them logged with vectors); the next ones become it"
        )
    print()


command = Command(
    help="latency, errors, retrieval health and drift of a collection, from its query log",
    configure=_configure,
    run=_run,
)
