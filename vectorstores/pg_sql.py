"""Pieces of the pgvector store that need no server: names, options, filters over jsonb,
index memory and the filtered-search cost model.

Table and index names are derived from a validated collection name and always composed
with ``psycopg.sql``; values, metadata field names included, always travel as parameters.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql
from psycopg.types.json import Jsonb

from rag.errors import ConfigError
from rag.filters import And, Comparison, Filter, Not, Or
from rag.types import Chunk

#: The schema holding the catalog and one table per collection.
SCHEMA = "ragkit"
CATALOG = "collections"

#: ``index=auto`` builds IVFFlat instead of HNSW from this many rows (the store option
#: ``auto_ivfflat_rows``). An estimate between two measured points, not a measured
#: crossover: on synthetic 384-d vectors pgvector's default HNSW graph (m 16,
#: ef_construction 64) reached recall@10 0.95 at 100k rows, and at 1M topped out at 0.941
#: (0.932 held-out) at ef_search 1000 after a 786 s build, where IVFFlat (1,000 lists)
#: reached 0.974 at probes 24 after 139 s (docs/benchmarks.md, "A recall target instead of
#: knobs"). Where between the two HNSW stops reaching 0.95 was not measured.
AUTO_IVFFLAT_ROWS = 500_000

DEFAULTS: dict[str, str | int] = {
    "index": "auto",  # auto | hnsw | ivfflat | none
    "m": 16,
    "ef_construction": 64,
    "ef_search": 40,
    "lists": 0,  # IVFFlat; 0: rows / 1000 (sqrt(rows) past a million) at build time
    "probes": 0,  # IVFFlat; 0: sqrt(lists)
    "maintenance_work_mem": "auto",
    "halfvec": "auto",  # auto: halfvec past 2,000 dimensions
    "iterative_scan": "relaxed_order",  # relaxed_order | strict_order | off
    "max_scan_tuples": 20_000,  # pgvector's default
    "index_min_rows": 10_000,
    "auto_ivfflat_rows": AUTO_IVFFLAT_ROWS,  # index=auto: IVFFlat from this many rows
    "filtered_search": "auto",  # auto | index | exact
}
#: Options fixed when a collection is created (recorded in the catalog).
BUILD_OPTIONS = ("index", "m", "ef_construction", "lists")

# pgvector's limits on dimensions: stored, indexed as vector, indexed as halfvec.
MAX_DIM = 16_000
VECTOR_INDEX_MAX_DIM = 2000
HALFVEC_INDEX_MAX_DIM = 4000

_SIZE = re.compile(r"^\s*(\d+)\s*(kB|MB|GB|TB)?\s*$")
_UNITS = {None: 2**10, "kB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40}
_VERSION = re.compile(r"^(\d+)\.(\d+)")


# --- names and options -----------------------------------------------------------------------


def table_name(collection: str) -> str:
    """A lower-case identifier for a collection's table, readable and collision-free:
    the name folded to [a-z0-9_] and cut to 40 characters, plus 8 hex digits of its
    hash (``Docs`` and ``docs`` are different collections). At most 51 characters, so
    index names made from it stay under PostgreSQL's 63."""
    folded = re.sub(r"[^a-z0-9_]", "_", collection.lower())[:40]
    digest = hashlib.sha256(collection.encode()).hexdigest()[:8]
    return f"c_{folded}_{digest}"


def ident(*parts: str) -> sql.Identifier:
    return sql.Identifier(*parts)


def check_options(opts: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the options merged by ``read_options``."""
    for key, choices in (
        ("index", ("auto", "hnsw", "ivfflat", "none")),
        ("iterative_scan", ("relaxed_order", "strict_order", "off")),
        ("filtered_search", ("auto", "index", "exact")),
    ):
        value = str(opts[key]).lower()
        if value not in choices:
            raise ConfigError(f"pgvector option {key}={opts[key]!r}: choose {', '.join(choices)}")
        opts[key] = value
    if opts["index"] == "ivfflat" and opts["iterative_scan"] == "strict_order":
        raise ConfigError("pgvector: IVFFlat's iterative scan has only relaxed_order (or off)")
    half = opts["halfvec"]
    if isinstance(half, str):
        if half.lower() not in ("auto", "1", "0", "true", "false", "yes", "no"):
            raise ConfigError(f"pgvector option halfvec={half!r}: choose auto, true or false")
        half = "auto" if half.lower() == "auto" else half.lower() in ("1", "true", "yes")
    opts["halfvec"] = half
    if str(opts["maintenance_work_mem"]).lower() == "auto":
        opts["maintenance_work_mem"] = "auto"
    else:
        parse_size(str(opts["maintenance_work_mem"]))
    m, efc = int(opts["m"]), int(opts["ef_construction"])
    if not 2 <= m <= 100 or not 2 * m <= efc <= 1000:
        raise ConfigError(
            "pgvector options need 2 <= m <= 100 and 2 x m <= ef_construction <= 1000, "
            f"got m={m}, ef_construction={efc}"
        )
    if not 1 <= int(opts["ef_search"]) <= 1000:
        raise ConfigError(f"pgvector option ef_search={opts['ef_search']} is not in 1-1000")
    if not 0 <= int(opts["lists"]) <= 32768 or int(opts["probes"]) < 0:
        raise ConfigError("pgvector options need 0 <= lists <= 32768 and probes >= 0")
    if int(opts["max_scan_tuples"]) < 1 or int(opts["index_min_rows"]) < 0:
        raise ConfigError("pgvector options need max_scan_tuples >= 1 and index_min_rows >= 0")
    if int(opts["auto_ivfflat_rows"]) < 0:
        raise ConfigError(
            f"pgvector option auto_ivfflat_rows={opts['auto_ivfflat_rows']} is negative"
        )
    return opts


def auto_index_kind(rows: int, ivfflat_rows: int) -> str:
    """The ANN index ``index=auto`` builds over ``rows`` rows: HNSW below ``ivfflat_rows``
    (:data:`AUTO_IVFFLAT_ROWS` unless the option says otherwise), IVFFlat from there."""
    return "ivfflat" if rows >= ivfflat_rows else "hnsw"


def parse_size(text: str) -> int:
    """Bytes in a PostgreSQL memory setting such as ``2GB`` or ``65536`` (kB)."""
    m = _SIZE.match(text)
    if not m:
        raise ConfigError(
            f"pgvector option maintenance_work_mem={text!r}: use 'auto' or a size such as "
            "'512MB' or '2GB'"
        )
    return int(m.group(1)) * _UNITS[m.group(2)]


def format_size(n: int) -> str:
    """A PostgreSQL memory setting (whole MB, at least 1MB) for ``n`` bytes."""
    return f"{max(1, -(-n // 2**20))}MB"


def version(text: str | None) -> tuple[int, int]:
    m = _VERSION.match(text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def metadata_json(chunk: Chunk) -> str:
    """The chunk's metadata as JSON text for jsonb.

    The metadata rule already keeps out what jsonb refuses (NaN, infinity, NUL characters),
    and jsonb's numeric keeps every 64-bit integer and double exactly. Its text form does not
    keep the difference between them, though: ``1e+20`` is read as numeric scale 0 and comes
    back as ``100000000000000000000``, an int. A float that Python writes with an exponent
    and no fraction (every one from 1e16 up) is therefore written out as ``<integer>.0``,
    which jsonb gives back with its ``.0``: the same double, still a float.
    """
    meta = chunk.metadata
    if not any(isinstance(v, float) and abs(v) >= _FLOAT_EXPONENT_FROM for v in meta.values()):
        return json.dumps(meta, ensure_ascii=False, allow_nan=False)
    parts = [
        json.dumps(key, ensure_ascii=False) + ": " + _json_scalar(value)
        for key, value in meta.items()
    ]
    return "{" + ", ".join(parts) + "}"


#: From here on Python writes floats with an exponent (``repr(1e16) == "1e+16"``).
_FLOAT_EXPONENT_FROM = 1e16


def _json_scalar(value: object) -> str:
    if isinstance(value, float) and abs(value) >= _FLOAT_EXPONENT_FROM:
        return f"{int(value)}.0"  # a double this large is an integer: exact digits
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def _json_object(obj: dict[str, Any]) -> str:
    """A one-level object with :func:`_json_scalar`'s numbers."""
    return (
        "{"
        + ", ".join(
            json.dumps(k, ensure_ascii=False) + ": " + _json_scalar(v) for k, v in obj.items()
        )
        + "}"
    )


@functools.cache
def vector_loader() -> type:
    """A loader for binary vector values giving float32 numpy arrays (pgvector's own makes
    ``Vector`` objects, which scan would then convert one by one)."""
    from psycopg.adapt import Loader
    from psycopg.pq import Format

    class VectorLoader(Loader):
        format = Format.BINARY

        def load(self, data: Any) -> np.ndarray:
            return np.frombuffer(data, dtype=">f4", offset=4).astype(np.float32)

    return VectorLoader


# --- the recall target ------------------------------------------------------------------------

#: The ef_search values ``calibrate`` tries, smallest first, up to pgvector's limit. It
#: measures with k + 1 rows (a query's own row is dropped) and a search raises ef_search to
#: its k, so values under 16 would measure a setting that searches of k = 10 do not use.
EF_SEARCHES = (16, 24, 32, 40, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1000)


def calibration_values(index_kind: str, lists: int) -> list[int]:
    """The values of the search parameter ``calibrate`` tries for an index, smallest first:
    :data:`EF_SEARCHES` for HNSW; for IVFFlat, probes 1, 2, 3, 4, 6, 8, 12, ... below the
    ``lists`` built, then ``lists`` itself (every list: an exact answer, which any target
    reaches)."""
    if index_kind == "hnsw":
        return list(EF_SEARCHES)
    values = sorted({p for e in range(16) for p in (2**e, 3 * 2**e // 2) if 0 < p < lists})
    return [*values, max(1, lists)]


# --- index memory ----------------------------------------------------------------------------

# Per-tuple bytes of an in-memory HNSW graph beyond the vector and its neighbour lists,
# measured on pgvector 0.8.6 from its "hnsw graph no longer fits into maintenance_work_mem
# after N tuples" notice: 16, 384 and 1024 dims, m 8, 16 and 32, vector and halfvec all
# gave 8 + dim x (4 or 2) + 32 x m + 190..200 bytes (layer 0 keeps 2m neighbours of 16 bytes).
_HNSW_TUPLE_OVERHEAD = 200


def hnsw_graph_bytes(rows: int, dim: int, m: int, *, half: bool) -> int:
    """Memory an HNSW build needs to hold the whole graph for ``rows`` vectors."""
    return rows * (8 + dim * (2 if half else 4) + 32 * m + _HNSW_TUPLE_OVERHEAD)


def ivfflat_build_bytes(rows: int, dim: int, lists: int, *, half: bool) -> int:
    """Memory an IVFFlat build needs: k-means over a sample of 50 rows per list, as
    pgvector allocates it: the sample and the centers (kept as full vectors whatever the
    column type), and Elkan's bounds, a float per (sample, list) pair and per pair of lists.
    At 1M rows and 1,000 lists of 384 dimensions that is 272 MB (pgvector 0.8.6 asked for
    273 MB; the caller adds headroom)."""
    del half  # k-means runs on full-precision vectors for halfvec too
    samples = min(rows, 50 * lists)
    vector = 8 + dim * 4
    return (samples + 2 * lists) * vector + (samples * lists + lists * lists) * 4 + samples * 8


def ivfflat_lists(rows: int) -> int:
    """pgvector's advice: rows / 1000 up to a million rows, sqrt(rows) beyond."""
    return max(1, rows // 1000 if rows <= 1_000_000 else int(rows**0.5))


def available_memory() -> int:
    """Memory this machine (or its cgroup) can still give, in bytes."""
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
            avail = min(avail, int(limit) - used)
    return max(0, avail)


# --- filtered search: index or exact? ---------------------------------------------------------

# Relative costs measured at 50k x 384-d on 2 cores, in units of one row of an exact
# filtered sequential scan (about 2 us): a tuple visited by an HNSW iterative scan costs
# about 4.5 (8-9 us), a row fetched through the GIN index on metadata about 2.5.
_HNSW_VISIT_COST = 4.5
_GIN_ROW_COST = 2.5


def gin_indexable(flt: Filter) -> bool:
    """Whether the planner can narrow ``flt`` with the GIN index (containment leaves)."""
    if isinstance(flt, Comparison):
        return flt.op in ("$eq", "$in")
    if isinstance(flt, And):
        return any(gin_indexable(f) for f in flt.items)
    if isinstance(flt, Or):
        return all(gin_indexable(f) for f in flt.items)
    return False


def gin_cutoff(rows: int, width: int) -> int:
    """Matching rows below which an exact scan through the GIN index beats an HNSW scan.

    The exact scan fetches the ``c`` matching rows (cost 2.5 c); the HNSW scan visits
    about ``width / f = width x rows / c`` tuples (cost 4.5 each) before ``width`` of them
    match; the first is cheaper while c^2 < 1.8 x width x rows.
    """
    return math.isqrt(int(_HNSW_VISIT_COST / _GIN_ROW_COST * width * rows)) + 1


def ivfflat_cutoff(rows: int, k: int, lists: int, probes: int) -> int:
    """Matching rows below which a filtered search on an IVFFlat index is answered exactly.

    The IVFFlat scan reads every row of the ``probes`` lists it visits, about
    ``probes x rows / lists`` rows whatever the filter, and keeps those that match: a
    sparse filter leaves few of them, and the nearest matches sit in lists it does not
    visit (recall@10 0.854 with a 1% filter at 1M rows, lists 1000, probes 24). An exact
    scan through the GIN index reads only the matching rows and misses none: at 1M rows
    the ~10k rows of a 1% filter took about 35 ms (p50) against 56 ms for the IVFFlat
    scan. So a filter matching no more rows than the scan would read anyway is answered
    exactly; per row the GIN path costs somewhat more (35 ms for 10k rows against 56 ms
    for 24k), so near the cutoff the exact answer may cost up to about 1.5 times the scan,
    which buys an exact answer. Below that, :func:`gin_cutoff` with width ``k`` still
    applies (small tables, few lists).
    """
    read = probes * rows // max(1, lists)
    return max(gin_cutoff(rows, k), read + 1)


def scan_budget(rows: int, max_scan_tuples: int) -> int:
    """hnsw.max_scan_tuples for a filter of unknown selectivity: as many tuples as cost one
    exact scan, so that a scan that gives up and is answered exactly costs at most twice
    the exact scan alone."""
    return max(1, min(max_scan_tuples, int(rows / _HNSW_VISIT_COST)))


# --- filters: the portable language to SQL over the jsonb metadata column ---------------------


def where_clause(flt: Filter) -> tuple[sql.Composable, list[Any]]:
    """A boolean SQL expression over ``metadata`` with the reference semantics.

    Every leaf is strictly true or false, never NULL (a missing field makes every
    comparison false, ``$ne`` and ``$nin`` included), so ``NOT`` is plain negation.
    Equality is jsonb containment, which is type-aware just as the language wants:
    numbers by value (``2 = 2.0``), booleans only with booleans, strings with strings;
    it can also use the GIN index on ``metadata``. Ranges hold only for JSON numbers.
    """
    if isinstance(flt, And | Or):
        parts = [where_clause(f) for f in flt.items]
        joiner = sql.SQL(" AND " if isinstance(flt, And) else " OR ")
        return (
            sql.SQL("({})").format(joiner.join(p for p, _ in parts)),
            [x for _, ps in parts for x in ps],
        )
    if isinstance(flt, Not):
        inner, params = where_clause(flt.item)
        return sql.SQL("(NOT {})").format(inner), params
    return _comparison(flt)


_RANGE = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _comparison(c: Comparison) -> tuple[sql.Composable, list[Any]]:
    if c.op in _RANGE:
        # jsonb orders numbers by value; the type test keeps strings and booleans out.
        return (
            sql.SQL(
                "COALESCE(jsonb_typeof(metadata -> %s::text) = 'number' "
                "AND (metadata -> %s::text) " + _RANGE[c.op] + " %s, false)"
            ),
            [c.field, c.field, Jsonb(c.value, dumps=_json_scalar)],
        )
    operands = c.value if isinstance(c.value, tuple) else (c.value,)
    contains = sql.SQL(" OR ").join(sql.SQL("metadata @> %s") for _ in operands)
    # Operands are written as metadata is (metadata_json): a float from 1e16 up by its exact
    # digits, or jsonb would compare the rounded decimal of its repr.
    params: list[Any] = [Jsonb({c.field: v}, dumps=_json_object) for v in operands]
    if c.op in ("$eq", "$in"):
        return sql.SQL("({})").format(contains), params
    # $ne / $nin: the field must be there (and not JSON null) and match none.
    return (
        sql.SQL(
            "COALESCE(jsonb_typeof(metadata -> %s::text) <> 'null' AND NOT ({}), false)"
        ).format(contains),
        [c.field, *params],
    )
