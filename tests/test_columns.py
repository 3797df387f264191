"""The FAISS store's in-memory filter columns against the reference semantics and SQL."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag.filters import evaluate, parse
from rag.store import StoreConfig
from rag.types import Chunk
from vectorstores.conformance import FILTER_CASES
from vectorstores.faiss import FaissStore, to_sql
from vectorstores.faiss_columns import ColumnCache

# Values a field can hold, including the awkward ones: JSON null, numbers that are equal
# across int and float, booleans beside 0 and 1, lists, and integers past 2**53.
_VALUES: list[Any] = [
    None,
    0,
    1,
    2,
    1.0,
    2.5,
    -3,
    True,
    False,
    "a",
    "b",
    "日本",
    "",
    [1, 2],
    {"k": 1},
]
_FIELDS = ("f", "g", "h")


def _metadata(rng: np.random.Generator, n: int) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        meta = {}
        for field in _FIELDS:
            if rng.random() < 0.8:  # otherwise missing
                meta[field] = _VALUES[int(rng.integers(len(_VALUES)))]
        rows.append(meta)
    return rows


def _random_filter(rng: np.random.Generator, depth: int = 0) -> dict[str, Any]:
    roll = rng.random()
    if depth < 2 and roll < 0.25:
        op = ("$and", "$or")[int(rng.integers(2))]
        return {op: [_random_filter(rng, depth + 1) for _ in range(int(rng.integers(1, 4)))]}
    if depth < 2 and roll < 0.35:
        return {"$not": _random_filter(rng, depth + 1)}
    field = _FIELDS[int(rng.integers(len(_FIELDS)))]
    scalars = [v for v in _VALUES if v is not None and not isinstance(v, list | dict)]
    op = ("$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte")[int(rng.integers(8))]
    if op in ("$in", "$nin"):
        picks = rng.choice(len(scalars), size=int(rng.integers(1, 4)), replace=False)
        return {field: {op: [scalars[int(i)] for i in picks]}}
    if op.startswith(("$g", "$l")):
        return {field: {op: float(rng.choice([-1, 0, 0.5, 1, 2, 3]))}}
    return {field: {op: scalars[int(rng.integers(len(scalars)))]}}


def _db(rows: list[dict[str, Any]]) -> sqlite3.Connection:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE chunks (rowid INTEGER PRIMARY KEY, metadata TEXT)")
    # rowids with gaps, as after deletions
    db.executemany(
        "INSERT INTO chunks (rowid, metadata) VALUES (?, ?)",
        [(3 * i + 1, json.dumps(m, ensure_ascii=False)) for i, m in enumerate(rows)],
    )
    return db


def test_columns_match_reference_and_sql() -> None:
    rng = np.random.default_rng(5)
    rows = _metadata(rng, 400)
    db = _db(rows)
    cache = ColumnCache()
    specs = [_random_filter(rng) for _ in range(300)]
    for spec in specs:
        flt = parse(spec)
        assert flt is not None
        expected = [3 * i + 1 for i, m in enumerate(rows) if evaluate(flt, m)]
        got = cache.rows(db, 1, flt)
        assert got is not None
        assert got.tolist() == expected, spec
        sql, params = to_sql(flt)
        via_sql = [
            r[0] for r in db.execute(f"SELECT rowid FROM chunks WHERE {sql} ORDER BY rowid", params)
        ]
        assert via_sql == expected, spec


def test_conformance_cases_on_columns() -> None:
    from vectorstores.conformance import dataset

    chunks, _ = dataset()
    rows = [c.metadata for c in chunks]
    db = _db(rows)
    cache = ColumnCache()
    for spec in FILTER_CASES:
        flt = parse(spec)
        assert flt is not None
        got = cache.rows(db, 1, flt)
        assert got is not None
        assert got.tolist() == [3 * i + 1 for i, m in enumerate(rows) if evaluate(flt, m)], spec


def test_integers_past_float_precision_go_to_sql() -> None:
    big = 2**53 + 1
    db = _db([{"f": big}, {"f": big - 1}, {"f": 1}, {"g": 1}])
    cache = ColumnCache()
    assert cache.rows(db, 1, parse({"f": big})) is None  # the field holds one
    assert cache.rows(db, 1, parse({"g": {"$lt": big}})) is None  # the filter holds one
    assert cache.rows(db, 1, parse({"g": 1})).tolist() == [10]


def _both_ways(db: sqlite3.Connection, rows: list[dict[str, Any]], spec: dict) -> list[int]:
    """The rows matching ``spec`` through SQL, checked against the columns where they answer
    and against the reference."""
    flt = parse(spec)
    assert flt is not None
    expected = [3 * i + 1 for i, m in enumerate(rows) if evaluate(flt, m)]
    got = ColumnCache().rows(db, 1, flt)
    if got is not None:
        assert got.tolist() == expected, spec
    sql, params = to_sql(flt)
    via_sql = [
        r[0] for r in db.execute(f"SELECT rowid FROM chunks WHERE {sql} ORDER BY rowid", params)
    ]
    assert via_sql == expected, spec
    return expected


def test_rule_keys_are_quoted_json_paths() -> None:
    """Keys with spaces, '-' and letters outside ASCII, in the columns and in SQL."""
    rows: list[dict[str, Any]] = [
        {"Header 1": "Intro", "título": 1, "content-type": "md", "_x": True},
        {"Header 1": "Über uns", "título": 2.5, "content-type": "txt"},
        {"título": "uno", "Header 1x": "Intro"},  # a key that extends another is another key
        {"Header 1": "", "_x": False},
        {},
    ]
    db = _db(rows)
    assert _both_ways(db, rows, {"Header 1": "Intro"}) == [1]
    assert _both_ways(db, rows, {"Header 1": {"$ne": "Intro"}}) == [4, 10]
    assert _both_ways(db, rows, {"$not": {"Header 1": {"$in": ["Intro", ""]}}}) == [4, 7, 13]
    assert _both_ways(db, rows, {"título": {"$gte": 1}}) == [1, 4]
    assert _both_ways(db, rows, {"título": {"$in": ["uno", 1, True]}}) == [1, 7]
    assert _both_ways(db, rows, {"content-type": {"$nin": ["md"]}}) == [4]
    assert _both_ways(db, rows, {"_x": {"$in": [True, False]}}) == [1, 10]


def test_sql_keeps_64_bit_integers_exact() -> None:
    lo, hi = -(2**63), 2**63 - 1
    rows: list[dict[str, Any]] = [{"n": hi}, {"n": hi - 1}, {"n": lo}, {"n": lo + 1}, {"n": 0}]
    db = _db(rows)
    assert ColumnCache().rows(db, 1, parse({"n": hi})) is None  # past 2**53: SQL answers
    assert _both_ways(db, rows, {"n": hi}) == [1]
    assert _both_ways(db, rows, {"n": lo}) == [7]
    assert _both_ways(db, rows, {"n": {"$gt": hi - 1}}) == [1]
    assert _both_ways(db, rows, {"n": {"$lt": lo + 1}}) == [7]
    assert _both_ways(db, rows, {"n": {"$nin": [hi, lo]}}) == [4, 10, 13]


def test_a_hand_built_tree_with_a_bad_key_never_reaches_sql() -> None:
    from rag.errors import FilterError
    from rag.filters import Comparison

    for field in ('a"b', "x') OR 1=1 --"):
        with pytest.raises(FilterError):
            to_sql(Comparison(field, "$eq", 1))
        with pytest.raises(FilterError):
            ColumnCache().rows(_db([{"a": 1}]), 1, Comparison(field, "$eq", 1))


def test_columns_follow_the_generation() -> None:
    db = _db([{"f": "a"}, {"f": "b"}])
    cache = ColumnCache()
    assert cache.rows(db, 1, parse({"f": "a"})).tolist() == [1]
    db.execute("UPDATE chunks SET metadata = ? WHERE rowid = 4", (json.dumps({"f": "a"}),))
    assert cache.rows(db, 1, parse({"f": "a"})).tolist() == [1], "same generation: cached"
    assert cache.rows(db, 2, parse({"f": "a"})).tolist() == [1, 4]


@pytest.mark.parametrize("index", ["flat", "hnsw"])
def test_faiss_filters_see_every_write(tmp_path: Path, index: str) -> None:
    """Filtered searches between writes: replaced metadata, new rows and deletions show up."""
    rng = np.random.default_rng(2)
    vecs = rng.normal(size=(60, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(60)]
    store = FaissStore("c", dim=8, config=StoreConfig(tmp_path, options={"index": index}))
    try:
        store.upsert([Chunk(ids[i], "", {"g": i % 3}) for i in range(40)], vecs[:40])
        q = vecs[0]
        assert {h.id for h in store.search(q, k=60, where={"g": 0})} == {
            ids[i] for i in range(0, 40, 3)
        }
        store.upsert([Chunk(ids[1], "", {"g": 0})], vecs[1:2])  # replaced: now matches
        store.upsert([Chunk(ids[i], "", {"g": 0}) for i in range(40, 60)], vecs[40:])
        store.delete([ids[3]])
        expected = {ids[i] for i in range(0, 40, 3) if i != 3} | {ids[1]} | set(ids[40:])
        assert {h.id for h in store.search(q, k=60, where={"g": 0})} == expected
    finally:
        store.close()
    other = FaissStore("c", dim=8, config=StoreConfig(tmp_path, options={"index": index}))
    try:  # a second process's view: the columns are read from what is on disk
        assert {h.id for h in other.search(vecs[0], k=60, where={"g": 0})} == expected
    finally:
        other.close()
