"""Monitoring a served collection from its data directory: latency, errors, retrieval health
and drift (PSI), with no service to run.

Every search and answer through :class:`~rag.collection.Collection` (``rag search``,
``rag ask``, ``rag chat``, the UI, ``rag serve``) leaves one event in the collection's query
log (:mod:`.querylog`), written by a background thread; ``rag monitor`` reads the log and
states each health signal as ok, watch or alert (:mod:`.report`), drift included, measured
against a reference of the corpus (:mod:`.drift`) and of a window of queries.

The API, for a server that searches and answers outside ``Collection.search``::

    from rag.monitoring import QueryEvent, open_query_log, search_event, note_search

    log = open_query_log(collection.path / "monitor.sqlite")     # or collection.querylog
    log.record(search_event(hits, mode="dense", k=5, kind="dense",
                            stages={"embed": 0.004, "search": 0.001, "total": 0.005},
                            query=text, vector=query_vector))    # never blocks
    log.record(error_event("search", exc, mode="dense", k=5, stages={}))

* ``open_query_log(path, *, policy=None) -> QueryLog``: one per file and process.
* ``QueryLog.record(event: QueryEvent) -> bool``: queues the event and returns at once;
  ``False`` when the queue (1,000 events) is full (the event is dropped and counted in
  ``QueryLog.dropped``) or logging is ``off``. ``flush(timeout=10.0) -> bool`` waits for
  the queue to be written; ``policy``, ``set_policy(policy)``, ``events(since=, last=)``.
* ``QueryEvent(op, ts, mode, k, hits, top_score, spread, score_kind, generator,
  citations, grounding, error, stages, query, vector)``; built by
  ``search_event(hits, *, op="search", mode, k, kind, stages, query="", vector=None)``,
  ``answer_event(answer, *, mode, k, kind, stages, vector=None)`` and
  ``error_event(op, error, *, mode, k, stages, query="")``; ``score_kind(mode, *,
  fusion="rrf", reranked=False)`` names the scale of the scores.
* ``stage_timings(answer) -> dict[str, float]``: an ``Answer``'s ``rewrite``, ``retrieve``,
  ``generate`` and ``first_token`` seconds under the log's stage names (:data:`STAGES`).
* ``note_search(*, vector=None, stages=None) -> bool``: inside ``Collection.ask(...,
  search=fn)``, ``fn`` may hand over the query vector and the stage latencies of its
  batched search, so that the answer's one event carries them (``Collection.ask`` logs
  one event per answer; a ``Collection.search`` called inside it logs none of its own).
* ``build_report(log, *, collection, window, thresholds=None) -> Report`` (``Window.parse
  ("1h" | "1d" | "500" | "all")``, ``Thresholds(...)``), ``Report.to_json()``,
  ``Report.to_text()``; ``take_baseline(log, *, window, thresholds, store=None,
  embed=None, embed_model="")``; ``timeline(events, ref, qref, *, group=50)`` for plots.
"""

from __future__ import annotations

from rag.monitoring.baseline import (
    current_query_reference,
    query_reference,
    record_corpus_drift,
    take_baseline,
    timeline,
)
from rag.monitoring.drift import CorpusReference, build_reference, kmeans
from rag.monitoring.events import (
    DEFAULT_POLICY,
    POLICIES,
    STAGES,
    QueryEvent,
    answer_event,
    check_policy,
    error_event,
    note_search,
    score_kind,
    search_event,
    stage_timings,
)
from rag.monitoring.querylog import FILE_NAME, QueryLog, open_query_log
from rag.monitoring.report import Report, Signal, Thresholds, Window, build_report
from rag.monitoring.stats import percentile, psi

__all__ = [
    "DEFAULT_POLICY",
    "FILE_NAME",
    "POLICIES",
    "STAGES",
    "CorpusReference",
    "QueryEvent",
    "QueryLog",
    "Report",
    "Signal",
    "Thresholds",
    "Window",
    "answer_event",
    "build_reference",
    "build_report",
    "check_policy",
    "current_query_reference",
    "error_event",
    "kmeans",
    "note_search",
    "open_query_log",
    "percentile",
    "psi",
    "query_reference",
    "record_corpus_drift",
    "score_kind",
    "search_event",
    "stage_timings",
    "take_baseline",
    "timeline",
]
