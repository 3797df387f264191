"""The contract on hostile input, as tests: what every store refuses, and how.

A companion of :mod:`vectorstores.conformance`, used the same way (a ``store_env`` fixture,
then ``from vectorstores.conformance_guards import *``); ``tests/test_conformance.py`` runs
both over every registered store.

* Filters past the limits of :mod:`rag.filters` (nesting, size) raise
  :class:`~rag.errors.FilterError` before they reach a translator or an engine, and filters
  at the limits are answered as the reference answers them.
* Numbers past 2**53 compare exactly, integers with floats included.
* Operands no store can hold (integers outside the signed 64-bit range, strings that are
  not valid Unicode or hold a NUL) raise :class:`~rag.errors.FilterError`.
* A collection name outside the rule of :func:`rag.contract.check_collection_name` raises
  :class:`~rag.errors.ConfigError` before anything is created, so no name reaches outside
  the store's folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rag import plugins
from rag.errors import ConfigError, FilterError
from rag.filters import MAX_DEPTH, MAX_NODES, And, Comparison, Not, Or, evaluate, parse
from rag.types import Chunk
from vectorstores.conformance import StoreEnv, dataset

__all__ = [
    "BAD_COLLECTION_NAMES",
    "UNSTORABLE_OPERANDS",
    "test_a_name_cannot_drop_a_folder_outside",
    "test_bad_collection_names_are_refused",
    "test_filters_at_the_limits_match_reference",
    "test_filters_past_the_limits_are_filter_errors",
    "test_numbers_past_2_53_compare_exactly",
    "test_unstorable_operands_are_filter_errors",
]


def _nested_not(depth: int) -> dict[str, Any]:
    spec: dict[str, Any] = {"n": {"$gte": 3}}
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


def _not_tree(depth: int) -> Any:
    tree: Any = Comparison("n", "$gte", 3)
    for _ in range(depth):
        tree = Not(tree)
    return tree


#: Nested far past the limit: ~850 levels crashed qdrant-edge's process, 400 pgvector's
#: translator, 1,000 every other (RecursionError).
_DEEP = 5_000


def test_filters_past_the_limits_are_filter_errors(store_env: StoreEnv) -> None:
    chunks, vecs = dataset(n=5)
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        deep_json = '{"$not": ' * _DEEP + '{"n": 1}' + "}" * _DEEP
        for where in (
            _nested_not(_DEEP),
            deep_json,
            _not_tree(_DEEP),
            _nested_not(MAX_DEPTH),  # the comparison sits one level below the limit
            {"$or": [{"n": i} for i in range(MAX_NODES + 1)]},
            {"n": {"$in": list(range(20_000))}},
        ):
            with pytest.raises(FilterError):
                store.search(vecs[0], k=5, where=where)  # type: ignore[arg-type]
        assert len(store.search(vecs[0], k=5)) == 5  # the store is still fine
    finally:
        store.close()


def test_filters_at_the_limits_match_reference(store_env: StoreEnv) -> None:
    """The deepest and the largest filters the parser allows reach every engine intact."""
    chunks, vecs = dataset(n=40)
    store = store_env.open()
    cases: list[Any] = [
        _nested_not(MAX_DEPTH - 1),
        _nested_not(MAX_DEPTH - 2),
        # the widest $or, and its negation: a chain of 999 conditions (an operand past
        # 2**53 takes FAISS from its float64 columns to SQL)
        {"$or": [{"n": i} for i in range(0, 2 * (MAX_NODES - 1), 2)]},
        {"$or": [{"n": 2**60}, *({"n": i} for i in range(0, 2 * (MAX_NODES - 2), 2))]},
        {"$not": {"$or": [{"n": i} for i in range(0, 2 * (MAX_NODES - 2), 2)]}},
        {"$and": [{"n": {"$ne": i}} for i in range(MAX_NODES - 1)]},
        {"tag": {"$in": ["a", *(f"v{i}" for i in range(9_000))]}},
    ]
    # And/Or/Not alternating down to the limit, a comparison at each level.
    tree: Any = Comparison("even", "$eq", True)
    for level in range(MAX_DEPTH - 1):
        leaf = Comparison("n", "$lt" if level % 2 else "$gte", 5 + level)
        tree = (And, Or, lambda items: Not(items[0]))[level % 3]((tree, leaf))
    cases.append(tree)
    try:
        store.upsert(chunks, vecs)
        for spec in cases:
            flt = parse(spec)
            expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
            hits = store.search(vecs[0], k=len(chunks), where=spec)
            assert {h.id for h in hits} == expected
            assert len(hits) == len(expected)
    finally:
        store.close()


#: Integers and floats around 2**53 (where doubles stop holding every integer) up to the
#: ends of the signed 64-bit range; the floats are ones every engine keeps exactly.
_BIG_INTS = [
    2**53,
    2**53 + 1,
    2**62,
    2**62 + 1,
    2**63 - 1,
    -(2**63),
    -(2**63) + 1024,
    -(2**63) + 1,
]
_BIG_FLOATS = [
    2.0**53,
    9007199254740994.0,
    2.0**62,
    2.0**63,
    -(2.0**63),
    -9.223372036854774e18,
    1e20,
]


def test_numbers_past_2_53_compare_exactly(store_env: StoreEnv) -> None:
    """Integers and floats of the same field compare by value, exactly, past 2**53 too (an
    engine comparing them as doubles takes 2**53 + 1 for 2**53)."""
    values: list[Any] = [*_BIG_INTS, *_BIG_FLOATS, 3, 3.5]
    chunks = [
        Chunk(f"00000000-0000-4000-8000-{i:012d}", "t", {"v": v}) for i, v in enumerate(values)
    ]
    vecs = np.random.default_rng(43).normal(size=(len(chunks), 16)).astype(np.float32)
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        for op in ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte"):
            for operand in values:
                flt = parse({"v": {op: operand}})
                expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
                hits = store.search(vecs[0], k=len(chunks), where=flt)
                assert {h.id for h in hits} == expected, (op, operand)
        flt = parse({"$not": {"v": {"$in": [2**53 + 1, 2.0**62, -(2**63)]}}})
        expected = {c.id for c in chunks if evaluate(flt, c.metadata)}
        assert {h.id for h in store.search(vecs[0], k=len(chunks), where=flt)} == expected
    finally:
        store.close()


#: Operands no store can hold, with the test id to show for each.
UNSTORABLE_OPERANDS: list[tuple[str, dict[str, Any]]] = [
    ("int-2**63", {"n": 2**63}),
    ("int-below-int64", {"n": {"$ne": -(2**63) - 1}}),
    ("int-2**70-in-list", {"n": {"$in": [1, 2**70]}}),
    ("range-2**64", {"n": {"$gt": 2**64}}),
    ("lone-surrogate", {"tag": "\ud800"}),
    ("lone-surrogate-in-list", {"tag": {"$nin": ["a", "x\udfff"]}}),
    ("nul", {"tag": "a\x00"}),
]


@pytest.mark.parametrize(
    "spec", [s for _, s in UNSTORABLE_OPERANDS], ids=[i for i, _ in UNSTORABLE_OPERANDS]
)
def test_unstorable_operands_are_filter_errors(store_env: StoreEnv, spec: dict) -> None:
    chunks, vecs = dataset(n=5)
    store = store_env.open()
    try:
        store.upsert(chunks, vecs)
        with pytest.raises(FilterError):
            store.search(vecs[0], k=5, where=spec)
        field, cond = next(iter(spec.items()))
        op, operand = next(iter(cond.items())) if isinstance(cond, dict) else ("$eq", cond)
        with pytest.raises(FilterError):  # a tree built by hand too
            store.search(vecs[0], k=5, where=Comparison(field, op, operand))
    finally:
        store.close()


#: Names outside the rule, among them some that would step out of a store's folder
#: (``<absolute>`` stands for an absolute path beside the store's folder).
BAD_COLLECTION_NAMES = [
    "../escape",
    "../../escape",
    "..",
    ".",
    "a/b",
    "a\\b",
    "<absolute>",
    "",
    "-lead",
    "_lead",
    "x" * 64,
    "trailing\n",
    "é",
    "a b",
    "a.b",
]


@pytest.mark.parametrize("name", BAD_COLLECTION_NAMES, ids=repr)
def test_bad_collection_names_are_refused(store_env: StoreEnv, name: str) -> None:
    data_dir = Path(store_env.config.data_dir)
    if name == "<absolute>":
        name = str(data_dir.parent / "escape")
    before = set(os.listdir(data_dir.parent))
    cls = plugins.load("stores", store_env.backend)
    for create in (True, False):
        with pytest.raises(ConfigError, match="collection name"):
            cls(name, dim=16, config=store_env.config, create=create).close()
    assert set(os.listdir(data_dir.parent)) == before
    # and a good name still works beside them
    store = store_env.open()
    try:
        store.upsert([Chunk("00000000-0000-4000-8000-000000000001", "t", {})], _one())
        assert store.count() == 1
    finally:
        store.close()


def test_a_name_cannot_drop_a_folder_outside(store_env: StoreEnv) -> None:
    """``Store("../x").drop()`` once deleted a folder beside the store's own."""
    data_dir = Path(store_env.config.data_dir)
    outside = data_dir.parent / "escape"
    outside.mkdir(exist_ok=True)
    (outside / "keep.txt").write_text("mine")
    cls = plugins.load("stores", store_env.backend)
    try:
        for name in ("../escape", str(outside)):
            with pytest.raises(ConfigError, match="collection name"):
                cls(name, dim=16, config=store_env.config).drop()
        assert sorted(os.listdir(outside)) == ["keep.txt"]
    finally:
        (outside / "keep.txt").unlink(missing_ok=True)
        if outside.exists() and not any(outside.iterdir()):
            outside.rmdir()


def _one() -> np.ndarray:
    v = np.ones((1, 16), dtype=np.float32)
    return v / np.linalg.norm(v)
