"""The recall target of :class:`vectorstores.pgvector.PgvectorStore`: ``calibrate``.

:class:`RecallMixin` measures recall@10 on the collection's own vectors and chooses the
search parameter of its index; the index itself is built by :mod:`vectorstores.pg_index`.

A recall target
    ``calibrate(target)`` (``rag ingest --recall``, default 0.95) chooses the search
    parameter of the collection's index: the smallest ``ef_search`` (HNSW; 16 to 1000) or
    ``probes`` (IVFFlat; 1 up to every list, which is exact) whose recall@10 reaches the
    target, measured on up to 500 of the collection's own vectors (fixed seed, each query's
    own row left out) against an exact scan in numpy (:mod:`vectorstores.calibration`).
    Searches set it per transaction as they set every scan setting (``last_search`` shows
    the values the server confirmed). The index's build options stay the collection's
    (recorded at creation); it builds the index if one is due first, and without one
    (``index=none``, or below ``index_min_rows``) the scan is exact and nothing is chosen.
    A named ``ef_search`` or ``probes`` is measured, not changed. One case changes the
    index: an ``index=auto`` collection whose HNSW graph (built while the table was
    smaller) falls short of the target at ef_search 1000 while the table now holds at
    least ``auto_ivfflat_rows`` rows is rebuilt as IVFFlat (pgvector's advised lists;
    IVFFlat built, then the HNSW index dropped, in one transaction under the build lock),
    and ``probes`` is chosen for it; the calibration's note says so. A store that another
    process had open meanwhile keeps searching with HNSW's settings until it is opened
    again. A collection created with ``index=hnsw`` is never switched: its note says the
    target was not reached and what would reach it. pgvector's default ef_search of 40
    reached recall@10 0.885 at 100k and 0.672 at 1M in the benchmark
    (eval/results/bench-sweep.jsonl).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from rag.errors import ConfigError
from rag.store import Calibration, OptionValue, read_options
from vectorstores import calibration
from vectorstores import pg_sql as q
from vectorstores.pg_catalog import Layout

_SQL = q.sql.SQL
_T = TypeVar("_T")
_PARAMS = {"hnsw": "ef_search", "ivfflat": "probes"}  # what calibrate chooses, by index


class RecallMixin:
    """``calibrate`` for a :class:`~vectorstores.pgvector.PgvectorStore`."""

    # The store's state, set in PgvectorStore.__init__ (annotations only).
    name: ClassVar[str]
    collection: str
    dim: int
    _opts: dict[str, Any]
    _layout: Layout
    _lock: threading.RLock
    _table_id: Any
    _indexed: bool
    _built_lists: int
    _budget: int

    if TYPE_CHECKING:  # defined by PgvectorStore and IndexMixin

        @property
        def _kind(self) -> str: ...

        @property
        def _vector(self) -> Any: ...

        def _run(self, what: str, work: Callable[[Any], _T]) -> _T: ...

        def count(self) -> int: ...

        def _check_scan(self, opts: Mapping[str, Any]) -> None: ...

        def _pages(self, columns: Any, batch_size: int, what: str) -> Iterator[list]: ...

        def _search_sql(self, clause: Any) -> Any: ...

        def _scan_settings(
            self, conn: Any, k: int, how: str, *, forced: bool
        ) -> dict[str, str]: ...

        def _apply_policy(self, conn: Any) -> None: ...

        def _find_indexes(self, conn: Any) -> bool: ...

        def _build(self, conn: Any, rows: int, *, switch: bool = False) -> bool: ...

    def calibrate(
        self, target: float, *, fixed: Mapping[str, OptionValue] | None = None
    ) -> Calibration:
        started = time.perf_counter()
        fixed = dict(fixed or {})
        named = self._named(fixed)
        with self._lock:
            self._run(
                "calibrate", lambda conn: (self._apply_policy(conn), self._find_indexes(conn))
            )
            # The named options are those the store was opened with; applied again here for
            # a caller that names them only now.
            self._opts.update({k: v for k, v in named.items() if k in fixed})
            count, kind = self.count(), self._kind

            result = calibration.recorder(target, count=count, fixed=fixed, started=started)

            if kind == "none":
                return result({}, 1.0, 0, "index=none: exact scan")
            if not self._indexed:
                rows = int(self._opts["index_min_rows"])
                what = "no index (index=auto)" if kind == "auto" else f"no {kind} index"
                return result({}, 1.0, 0, f"{what} below {rows} rows: exact scan")
            if count < 2:
                return result({}, 1.0, 0, "too few chunks to measure")
            param = _PARAMS[kind]
            queries, measure = self._recall_meter(count)
            value, got, reached = self._smallest(param, fixed, measure, target)
            if param in fixed:
                return result({}, got, queries, f"{param}={value} named: measured")
            auto = self._layout.index_kind == "auto"
            if reached:
                label = f"auto ({kind})" if auto else kind
                return result(
                    {param: value},
                    got,
                    queries,
                    f"{label}: the smallest {param} that reaches the target",
                )
            threshold = int(self._opts["auto_ivfflat_rows"])
            if kind == "hnsw" and auto and count >= threshold:
                return self._switch(result, count, value, got, fixed, measure, target, queries)
            note = f"target not reached: {got:.3f} at the largest {param}, {value}"
            if kind == "hnsw":
                # At 1M the default graph (m 16, ef_construction 64) tops out at 0.94.
                if auto:
                    note += (
                        f"; index=auto rebuilds it as IVFFlat from {threshold:,} rows "
                        "(auto_ivfflat_rows)"
                    )
                note += (
                    "; a collection built with index=ivfflat, or a larger m and "
                    "ef_construction, reaches more (drop it and ingest again)"
                )
            return result({param: value}, got, queries, note)

    def _smallest(
        self,
        param: str,
        fixed: Mapping[str, OptionValue],
        measure: Callable[[str, int], calibration.Recall],
        target: float,
    ) -> tuple[int, float, bool]:
        """The smallest value of ``param`` that reaches ``target`` (the named one, if
        ``fixed`` names it), set in the options; a failed measure leaves them alone."""
        if param in fixed:
            values = [int(self._opts[param])]
        else:
            values = q.calibration_values(self._kind, self._built_lists)
        before = self._opts[param]
        try:
            value, got, reached = calibration.smallest_reaching(
                values, lambda v: measure(param, v), target
            )
        except BaseException:
            self._opts[param] = before
            raise
        self._opts[param] = value
        return value, got, reached

    def _switch(
        self,
        result: Callable[..., Calibration],
        count: int,
        ef_search: int,
        hnsw_got: float,
        fixed: Mapping[str, OptionValue],
        measure: Callable[[str, int], calibration.Recall],
        target: float,
        queries: int,
    ) -> Calibration:
        """``index=auto``, at least ``auto_ivfflat_rows`` rows, and the HNSW index short of
        the target at the largest ef_search: rebuild it as IVFFlat (pgvector's advised
        lists, unless the collection was created with ``lists``) and choose ``probes``.
        The HNSW graph was built on a smaller table (or under a larger threshold); at 1M
        rows the default graph tops out at recall 0.941 where IVFFlat reaches 0.974
        (docs/benchmarks.md)."""
        self._run(
            "rebuild the index as IVFFlat",
            lambda conn: self._build(conn, count, switch=True),
        )
        head = f"auto: HNSW reached {hnsw_got:.3f} at ef_search {ef_search}"
        if self._kind != "ivfflat":  # the HNSW index went away meanwhile
            return result({}, hnsw_got, queries, f"{head}; the index changed: measure again")
        head += f"; rebuilt as IVFFlat ({self._built_lists:,} lists) at {count:,} rows"
        value, got, reached = self._smallest("probes", fixed, measure, target)
        if "probes" in fixed:
            return result({}, got, queries, f"{head}; probes={value} named: measured")
        if reached:
            note = f"{head}; probes {value} reaches the target"
        else:
            note = f"{head}; target not reached: {got:.3f} at the largest probes, {value}"
        return result({"probes": value}, got, queries, note)

    def _named(self, fixed: Mapping[str, OptionValue]) -> dict[str, Any]:
        """The options ``fixed`` names, checked; build options must be the collection's."""
        named = q.check_options(read_options(fixed, q.DEFAULTS, backend=self.name))
        self._check_scan(named)
        layout = self._layout
        recorded = {
            "index": layout.index_kind,
            "m": layout.m,
            "ef_construction": layout.ef_construction,
            "lists": layout.lists,
        }
        differ = [
            f"{key}={recorded[key]}"
            for key in q.BUILD_OPTIONS
            if key in fixed and named[key] != recorded[key]
        ]
        if differ:
            raise ConfigError(
                f"pgvector collection {self.collection!r} was created with "
                f"{', '.join(differ)}, and a recall target chooses only ef_search (HNSW) or "
                "probes (IVFFlat); leave those options out, or drop the collection and ingest "
                "again"
            )
        return named

    def _recall_meter(self, count: int) -> tuple[int, Callable[[str, int], calibration.Recall]]:
        """The sample size, and a function from a search parameter and its value to the
        recall@10 that searches give at it, on a sample of the collection's own vectors
        (each query's own row left out), against an exact scan
        (:mod:`vectorstores.calibration`); the exact neighbours are found once."""
        k = min(calibration.K, count - 1)
        ids = self._run(
            "calibrate",
            lambda conn: [
                r[0] for r in conn.execute(_SQL("SELECT id FROM {}").format(self._table_id))
            ],
        )
        # Rows are numbered for the numpy helpers; a row written meanwhile gets a new number.
        number = {cid: i for i, cid in enumerate(ids)}
        picked = calibration.sample(
            np.arange(len(ids)), calibration.sample_size(len(ids), self.dim)
        )
        by_id = dict(
            self._run(
                "calibrate",
                lambda conn: conn.execute(
                    _SQL("SELECT id, {} FROM {} WHERE id = ANY(%s)").format(
                        self._vector, self._table_id
                    ),
                    [[ids[i] for i in picked]],
                    binary=True,
                ).fetchall(),
            )
        )
        queries = _unit(np.vstack([by_id[ids[i]] for i in picked]))

        def batches() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for page in self._pages(_SQL("id"), 20_000, "calibrate"):
                rows = [number.setdefault(r[0], len(number)) for r in page]
                yield np.array(rows), _unit(np.vstack([r[1] for r in page]))

        truth = calibration.exact_neighbours(queries, picked, batches(), k)
        search = self._search_sql(None)

        def measure(param: str, value: int) -> calibration.Recall:
            self._opts[param] = value

            def read(conn: Any) -> list[list[int]]:
                with conn.transaction():
                    self._budget = int(self._opts["max_scan_tuples"])
                    self._scan_settings(conn, k + 1, "index", forced=False)
                    return [
                        [
                            number.get(r[0], -1)
                            for r in conn.execute(search, [qv, k + 1, k + 1], prepare=False)
                        ]
                        for qv in queries
                    ]

            return calibration.recall(self._run("calibrate", read), picked, truth)

        return len(picked), measure


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: cosine similarity as an inner product."""
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-30)
