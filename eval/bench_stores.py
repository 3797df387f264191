"""The store configurations the benchmark runs: registry backend, options, search sweep.

Every configuration is a production store from the plugin registry opened with a
``StoreConfig`` whose options are the ones below; the benchmark has no client code of its
own. Index sizes that depend on N are computed here and recorded with each result:

* FAISS IVF: ``nlist = 4 * sqrt(N)`` (FAISS's usual 4-16 x sqrt(N)), at most ``N / 39`` so
  that the quantizer is trained (see ``vectorstores/faiss.py``).
* pgvector IVFFlat: ``lists = N / 1000`` up to 1M rows, ``sqrt(N)`` above (pgvector's advice).
* pgvector ``maintenance_work_mem``: PostgreSQL's default 64 MB, or ``auto``, the adapter's
  own sizing (the estimated graph plus 10%, capped at half the memory available).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PG_DEFAULT_MWM_MB = 64  # PostgreSQL's default maintenance_work_mem


@dataclass(frozen=True)
class StoreSpec:
    """One benchmarked configuration of one backend."""

    name: str
    backend: str
    family: str  # flat | hnsw | ivf | exact (how latency should scale)
    description: str
    options: Callable[[int, int], dict[str, Any]]  # (n, dim) -> build options
    sweep_option: str | None = None
    sweep: tuple[int, ...] = ()
    quick_sweep: tuple[int, ...] = ()
    default: int | None = None  # the sweep value used for filtered search and throughput
    needs_url: str | None = None  # "qdrant" for a server configuration
    in_quick: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def sweep_values(self, quick: bool) -> tuple[int | None, ...]:
        if self.sweep_option is None:
            return (None,)
        values = self.quick_sweep if quick else self.sweep
        if self.default is not None and self.default not in values:
            values = (*values, self.default)
        return tuple(sorted(values))


def faiss_nlist(n: int) -> int:
    return max(1, min(round(4 * math.sqrt(n)), n // 39))


def pg_lists(n: int) -> int:
    from vectorstores.pg_sql import ivfflat_lists  # psycopg only where pgvector runs

    return ivfflat_lists(n)


def pg_hnsw_graph_bytes(n: int, dim: int, *, m: int = 16, halfvec: bool = False) -> float:
    """The memory pgvector's HNSW build needs to hold the whole graph in
    ``maintenance_work_mem``, as the pgvector adapter estimates it (64 MB holds about
    29,700 384-d vectors at m 16)."""
    from vectorstores.pg_sql import hnsw_graph_bytes

    return float(hnsw_graph_bytes(n, dim, m, half=halfvec))


def _const(options: dict[str, Any]) -> Callable[[int, int], dict[str, Any]]:
    return lambda n, dim: dict(options)


HNSW_EF = (10, 16, 32, 64, 128, 256)
PG_EF = (10, 20, 40, 80, 160, 400)

SPECS: dict[str, StoreSpec] = {
    s.name: s
    for s in (
        StoreSpec(
            "faiss-flat",
            "faiss",
            "flat",
            "FAISS IndexFlatIP (exact)",
            _const({"index": "flat"}),
            in_quick=True,
        ),
        StoreSpec(
            "faiss-hnsw",
            "faiss",
            "hnsw",
            "FAISS HNSW M16 efC100",
            _const({"index": "hnsw", "hnsw_m": 16, "ef_construction": 100}),
            "ef_search",
            HNSW_EF,
            (16, 64),
            64,
            in_quick=True,
        ),
        StoreSpec(
            "faiss-ivf",
            "faiss",
            "ivf",
            "FAISS IVFFlat nlist=4*sqrt(N)",
            lambda n, dim: {"index": "ivf", "nlist": faiss_nlist(n)},
            "nprobe",
            (1, 2, 4, 8, 16, 32, 64, 128),
            (4, 16),
            16,
        ),
        StoreSpec(
            "chroma",
            "chroma",
            "hnsw",
            "Chroma defaults (M16 efC100)",
            _const({}),
            "ef_search",
            (10, 16, 32, 64, 100, 200),
            (16, 100),
            100,
            in_quick=True,
        ),
        StoreSpec(
            "qdrant-edge",
            "qdrant",
            "hnsw",
            "Qdrant engine in process (qdrant-edge), Qdrant's defaults m16 efC100",
            _const({"engine": "edge", "hnsw_m": 16, "ef_construction": 100}),
            "ef_search",
            HNSW_EF,
            (16, 64),
            64,
            in_quick=True,
        ),
        StoreSpec(
            "qdrant-local",
            "qdrant",
            "exact",
            "qdrant-client local mode (exact, pure Python)",
            _const({"engine": "local"}),
        ),
        StoreSpec(
            "qdrant-server",
            "qdrant",
            "hnsw",
            "Qdrant server (--qdrant-url), Qdrant's defaults m16 efC100",
            _const({"hnsw_m": 16, "ef_construction": 100}),
            "ef_search",
            HNSW_EF,
            (16, 64),
            64,
            needs_url="qdrant",
        ),
        StoreSpec(
            "pgvector-hnsw",
            "pgvector",
            "hnsw",
            f"pgvector HNSW m16 efC64, maintenance_work_mem {PG_DEFAULT_MWM_MB} MB (default)",
            _const(
                {
                    "index": "hnsw",
                    "m": 16,
                    "ef_construction": 64,
                    "maintenance_work_mem": f"{PG_DEFAULT_MWM_MB}MB",
                }
            ),
            "ef_search",
            PG_EF,
            (20, 40),
            40,
            in_quick=True,
        ),
        StoreSpec(
            "pgvector-hnsw-mem",
            "pgvector",
            "hnsw",
            "pgvector HNSW m16 efC64, maintenance_work_mem auto (sized to the graph)",
            lambda n, dim: {
                "index": "hnsw",
                "m": 16,
                "ef_construction": 64,
                "maintenance_work_mem": "auto",
            },
            "ef_search",
            PG_EF,
            (20, 40),
            40,
        ),
        StoreSpec(
            "pgvector-halfvec",
            "pgvector",
            "hnsw",
            "pgvector HNSW m16 efC64 on halfvec, maintenance_work_mem auto",
            lambda n, dim: {
                "index": "hnsw",
                "m": 16,
                "ef_construction": 64,
                "halfvec": True,
                "maintenance_work_mem": "auto",
            },
            "ef_search",
            PG_EF,
            (20, 40),
            40,
        ),
        StoreSpec(
            "pgvector-ivfflat",
            "pgvector",
            "ivf",
            "pgvector IVFFlat lists=N/1000 (sqrt(N) past 1M)",
            lambda n, dim: {
                "index": "ivfflat",
                "lists": pg_lists(n),
                "maintenance_work_mem": "auto",
            },
            "probes",
            (1, 2, 4, 8, 16, 32, 64),
            (4, 16),
            8,
        ),
    )
}


def select(names: str, *, quick: bool, urls: dict[str, str | None]) -> list[StoreSpec]:
    """The configurations named in ``names`` (comma-separated config names, backend names
    meaning all their configurations, or ``all``), leaving out server configurations
    without a URL."""
    from rag.errors import ConfigError

    wanted: list[StoreSpec] = []
    for part in [p.strip() for p in names.split(",") if p.strip()]:
        if part == "all":
            picked = [s for s in SPECS.values() if not quick or s.in_quick]
            picked = [s for s in picked if s.needs_url is None or urls.get(s.needs_url)]
        elif part in SPECS:
            picked = [SPECS[part]]
        else:
            picked = [s for s in SPECS.values() if s.backend == part and s.needs_url is None]
            if not picked:
                raise ConfigError(
                    f"unknown store configuration {part!r}; known: all, "
                    + ", ".join(sorted({*SPECS, *(s.backend for s in SPECS.values())}))
                )
        for spec in picked:
            if spec.needs_url and not urls.get(spec.needs_url):
                raise ConfigError(f"{spec.name} needs --{spec.needs_url}-url")
            if spec not in wanted:
                wanted.append(spec)
    return wanted
