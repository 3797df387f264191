"""Fuzzing the filter language: the parser alone, then every registered store's translation.

Hypothesis writes random filters (every operator, ``$and``/``$or``/``$not`` nested and
sometimes past the depth limit, several conditions in one object, field names on both sides
of the metadata key rule, operands of every kind: unicode strings, lone surrogates, NUL,
integers at and past the ends of the signed 64-bit range, floats, booleans, ISO dates) and
random records. The rules:

* :func:`rag.filters.parse` gives a filter (or ``None``) or raises
  :class:`~rag.errors.FilterError`, for any JSON text and any Python object; what it
  accepts it accepts again, unchanged.
* every store answers a filter the parser accepts exactly as :func:`rag.filters.evaluate`
  does (an exact search with ``k`` past the number of records), and raises
  :class:`~rag.errors.FilterError` for one it refuses: never another exception.

Examples are random on each run (``database=None``: nothing is written to the tree); a
failure prints the example and a ``@reproduce_failure`` blob. The whole file takes about
two minutes on two cores; ``RAG_FUZZ_EXAMPLES`` scales the number of examples.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, event, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rag import plugins  # noqa: E402
from rag.errors import FilterError  # noqa: E402
from rag.filters import (  # noqa: E402
    And,
    Comparison,
    Not,
    Or,
    evaluate,
    parse,
    superset,
    to_json,
)
from rag.store import StoreConfig, VectorStore  # noqa: E402
from rag.types import Chunk  # noqa: E402
from tests.test_conformance import SESSION_SERVERS, _missing  # noqa: E402
from vectorstores.conformance import StoreEnv  # noqa: E402

_SCALE = float(os.environ.get("RAG_FUZZ_EXAMPLES", "1"))


def _examples(n: int) -> int:
    return max(1, int(n * _SCALE))


_SETTINGS = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much],
}

# --- what goes into records and filters --------------------------------------------------------

#: Keys the metadata rule allows: spaces, "-", a leading "_", letters of other scripts, the
#: longest key, words that are operators elsewhere.
FIELDS = [
    "a",
    "b",
    "n",
    "Header 1",
    "título",
    "_x",
    "content-type",
    "ß",
    "日本",
    "k" * 64,
    "and",
    "x y-z_1",
]
#: Names the rule refuses: a filter on them is a FilterError.
BAD_FIELDS = ["", "a.b", "$a", "1a", "a\n", "a ", "k" * 65, "a'b", 'a"b', "a\\b", "a:b"]

_EDGE_INTS = [
    0,
    1,
    -1,
    2,
    3,
    2**31,
    2**53,
    2**53 + 1,
    -(2**53) - 1,
    2**62,
    2**63 - 1,
    -(2**63),
    2**63 - 2,
]
_OUT_INTS = [2**63, -(2**63) - 1, 2**64, -(2**100)]
_EDGE_FLOATS = [0.0, -0.0, 0.5, 1.0, 2.0, 2.5, -1.5, 1e20, 2.0**53, 2.0**63, 1e-300, 5e-324, 1e308]
_TEXT = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
_EDGE_STRINGS = ["", "a", "b", "1", "true", "日本", "ç", "Ω≈ 🚀", "2024-01-01", "a" * 300]
_DATES = [
    "2024-01-01",
    "2024-01-01T00:00:00Z",
    "2024-01-01T01:00:00+01:00",
    "1970-01-01",
    "0001-01-01",
    "9999-12-31T23:59:59",
    "2024-13-01",  # not a date: FilterError
]

INTS = st.one_of(st.sampled_from(_EDGE_INTS), st.integers(-5, 5), st.integers(-(2**63), 2**63 - 1))
#: Floats every engine keeps exactly: qdrant-edge 0.9 and chromadb 1.5 change the last digit
#: of some doubles of 15 or more significant digits (test_edge_keeps_doubles_exactly in
#: test_qdrant.py, test_doubles_are_kept_exactly in test_chroma.py), which the fuzz would
#: find at once; decimals of up to 6 digits and the values above are kept.
FLOATS = st.one_of(
    st.sampled_from(_EDGE_FLOATS),
    st.floats(-4, 4).map(lambda f: round(f, 1)),
    st.builds(lambda m, e: float(f"{m}e{e}"), st.integers(-999_999, 999_999), st.integers(-12, 8)),
)
#: Filter operands need no such care: they reach every engine exactly.
ANY_FLOATS = st.one_of(FLOATS, st.floats(allow_nan=False, allow_infinity=False))
STRINGS = st.one_of(st.sampled_from(_EDGE_STRINGS), st.text(_TEXT, max_size=6))
#: Values that records share often, so that filters match some records and not others.
COMMON = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0.5, 1.0, 2.5, -1.5, 1e20]),
    st.booleans(),
    st.sampled_from(["", "a", "b", "日本", "2024-01-01"]),
)
#: What a record can hold.
STORABLE = st.one_of(COMMON, COMMON, INTS, FLOATS, st.booleans(), STRINGS)
#: Filter operands: anything storable, and what no store can hold.


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy, odds: int = 15) -> st.SearchStrategy:
    """``good``, and ``bad`` about once in ``odds`` draws: a filter has several leaves, and
    most filters should reach the stores."""
    # (one_of with the same strategy repeated would draw each distinct one about as often;
    # a middle value of an integer, not an end, since Hypothesis favours the ends)
    return st.integers(0, odds - 1).flatmap(lambda i: bad if i == odds // 2 else good)


OPERANDS = _mostly(
    st.one_of(STORABLE, STORABLE, ANY_FLOATS),
    st.sampled_from(
        [*_OUT_INTS, "\ud800", "x\udfff", "a\x00", float("nan"), float("inf"), None, [1], {}]
    ),
)
RANGE_OPERANDS = _mostly(
    st.one_of(INTS, ANY_FLOATS, st.sampled_from(_DATES[:-1])),
    st.one_of(st.sampled_from(_DATES[-1:]), OPERANDS),
    odds=6,
)

MAX_RECORDS = 24
#: Fields of which records and filters use the first few most.
COMMON_FIELDS = st.integers(0, 2).flatmap(
    lambda i: st.sampled_from(FIELDS if i == 1 else FIELDS[:4])
)
RECORDS = st.lists(
    st.dictionaries(COMMON_FIELDS, STORABLE, max_size=4), min_size=3, max_size=MAX_RECORDS
)


def _field() -> st.SearchStrategy[str]:
    return _mostly(COMMON_FIELDS, st.sampled_from(BAD_FIELDS))


def _condition() -> st.SearchStrategy[tuple[str, Any]]:
    """One operator and its operand (sometimes one that is refused)."""
    return _mostly(
        st.one_of(
            st.tuples(st.sampled_from(["$eq", "$ne"]), OPERANDS),
            st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), RANGE_OPERANDS),
            st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(OPERANDS, min_size=1, max_size=5)),
        ),
        st.one_of(
            st.tuples(st.sampled_from(["$in", "$nin"]), st.sampled_from([[], "ab", 1])),
            st.tuples(st.sampled_from(["$regex", "$exists", "eq"]), OPERANDS),
        ),
    )


def _comparison() -> st.SearchStrategy[dict[str, Any]]:
    shorthand = st.builds(lambda f, v: {f: v}, _field(), OPERANDS)
    one = st.builds(lambda f, c: {f: {c[0]: c[1]}}, _field(), _condition())
    several = st.builds(
        lambda f, cs: {f: dict(cs)}, _field(), st.lists(_condition(), min_size=2, max_size=3)
    )
    return st.one_of(shorthand, one, one, one, several)


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out


def _wrap_not(spec: dict[str, Any], depth: int) -> dict[str, Any]:
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


FILTERS = st.recursive(
    _comparison(),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: {"$and": xs}),
        st.lists(inner, min_size=1, max_size=4).map(lambda xs: {"$or": xs}),
        inner.map(lambda x: {"$not": x}),
        st.lists(inner, min_size=2, max_size=3).map(_merge),  # several keys: an $and
    ),
    max_leaves=10,
)
#: Now and then nested down to the depth limit and past it.
DEEP_FILTERS = st.builds(_wrap_not, FILTERS, st.sampled_from([20, 28, 30, 31, 32, 40]))
ANY_FILTER = _mostly(FILTERS, DEEP_FILTERS, odds=8)


def _as_tree(spec: Any) -> Any:
    """The tree a caller could build by hand for ``spec`` (or ``spec`` if it has no such
    form), without the parser's checks."""
    if not isinstance(spec, dict) or not spec:
        return spec
    parts: list[Any] = []
    for key, value in spec.items():
        if key in ("$and", "$or") and isinstance(value, list):
            items = tuple(_as_tree(v) for v in value)
            parts.append(And(items) if key == "$and" else Or(items))
        elif key == "$not":
            parts.append(Not(_as_tree(value)))
        elif isinstance(value, dict):
            parts.extend(
                Comparison(key, op, tuple(v) if isinstance(v, list) else v)
                for op, v in value.items()
            )
        else:
            parts.append(Comparison(key, "$eq", value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


# --- the parser alone --------------------------------------------------------------------------


def _parses_or_refuses(spec: Any) -> None:
    try:
        flt = parse(spec)
    except FilterError:
        return
    if flt is None:
        return
    assert parse(flt) == flt  # what it accepts, it accepts again, unchanged
    assert parse(json.dumps(to_json(flt), ensure_ascii=False)) == flt


JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.text(max_size=8),
        st.sampled_from(["$and", "$or", "$not", "$in", "$eq", "$gt"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(["$and", "$or", "$not", "a", "$in", "$gt"]), _field()),
            inner,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=_examples(3000), **_SETTINGS)
@given(spec=st.one_of(ANY_FILTER, JSON_VALUES))
def test_parse_gives_a_filter_or_a_filter_error(spec: Any) -> None:
    _parses_or_refuses(spec)
    _parses_or_refuses(_as_tree(spec))  # the same rules for a tree built by hand
    try:
        text = json.dumps(spec, ensure_ascii=False)
    except (TypeError, ValueError):
        return
    _parses_or_refuses(text)


def _deep_text(kind: str, depth: int) -> str:
    if kind == "not":
        return '{"$not": ' * depth + '{"a": 1}' + "}" * depth
    if kind == "and":
        return '{"$and": [' * depth + '{"a": 1}' + "]}" * depth
    if kind == "list":
        return "[" * depth + "]" * depth
    return '{"a": ' * depth + "1" + "}" * depth


@settings(max_examples=_examples(2000), **_SETTINGS)
@given(
    text=st.one_of(
        st.text(max_size=40),
        st.text(alphabet='{}[]":,$anotdr1 \\', max_size=60),
        st.builds(
            _deep_text, st.sampled_from(["not", "and", "list", "object"]), st.integers(0, 20_000)
        ),
        st.builds(
            lambda spec, cut, junk: json.dumps(spec)[:cut] + junk,
            FILTERS,
            st.integers(0, 200),
            st.text(alphabet='{}[]":,\\ue', max_size=4),
        ),
        st.integers(1, 6000).map(lambda n: '{"a": ' + "9" * n + "}"),
    )
)
def test_parse_json_text_gives_a_filter_or_a_filter_error(text: str) -> None:
    _parses_or_refuses(text)


@settings(max_examples=_examples(1000), **_SETTINGS)
@given(
    spec=FILTERS,
    metas=RECORDS,
    marked=st.sets(st.sampled_from(FIELDS[:6])),
    big=st.booleans(),
)
def test_superset_keeps_every_match(
    spec: Any, metas: list[dict[str, Any]], marked: set[str], big: bool
) -> None:
    """What the stores that compare some numbers inexactly ask their engine for."""
    try:
        flt = parse(spec)
    except FilterError:
        return
    if flt is None:
        return

    def inexact(c: Comparison) -> bool:
        operands = c.value if isinstance(c.value, tuple) else (c.value,)
        if big:  # as chroma and qdrant mark them
            return any(
                isinstance(v, int | float) and not isinstance(v, bool) and abs(v) >= 2**53
                for v in operands
            )
        return c.field in marked

    wide = superset(flt, inexact)
    for meta in metas:
        if evaluate(flt, meta):
            assert wide is True or (wide is not False and evaluate(wide, meta)), (wide, meta)


# --- every store -------------------------------------------------------------------------------

DIM = 8
_VECS = np.random.default_rng(17).normal(size=(MAX_RECORDS, DIM)).astype(np.float32)
_VECS /= np.linalg.norm(_VECS, axis=1, keepdims=True)
_IDS = [str(uuid.UUID(int=i + 1)) for i in range(MAX_RECORDS)]


class Loaded:
    """A store and the records it holds now."""

    def __init__(self, store: VectorStore) -> None:
        self.store = store
        self.metas: list[dict[str, Any]] = []

    def load(self, metas: list[dict[str, Any]]) -> None:
        n = len(metas)
        if n:
            chunks = [Chunk(_IDS[i], f"r{i}", m) for i, m in enumerate(metas)]
            self.store.upsert(chunks, _VECS[:n])
        if len(self.metas) > n:
            self.store.delete(_IDS[n : len(self.metas)])
        self.metas = metas


@pytest.fixture(scope="module", params=plugins.registry().names("stores"))
def loaded(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Loaded]:
    name = request.param
    missing = _missing(name)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}, and CI must run every store")
        pytest.skip(missing)
    root: Path = tmp_path_factory.mktemp("fuzz") / name
    release = SESSION_SERVERS[name](root) if name in SESSION_SERVERS else None
    store = StoreEnv(name, StoreConfig(root)).open("fuzz", dim=DIM)
    try:
        yield Loaded(store)
    finally:
        store.close()
        if release is not None:
            release()


@settings(max_examples=_examples(800), **_SETTINGS)
@given(metas=RECORDS, spec=ANY_FILTER, hand_built=st.booleans(), q=st.integers(0, MAX_RECORDS - 1))
def test_store_filters_match_reference(
    loaded: Loaded, metas: list[dict[str, Any]], spec: Any, hand_built: bool, q: int
) -> None:
    loaded.load(metas)
    where = _as_tree(spec) if hand_built else spec
    try:
        flt = parse(where)
    except FilterError:
        event("refused by the parser")
        with pytest.raises(FilterError):
            loaded.store.search(_VECS[q], k=MAX_RECORDS, where=where)
        return
    expected = {_IDS[i] for i, m in enumerate(metas) if evaluate(flt, m)}
    event(
        "matched none"
        if not expected
        else "matched all"
        if len(expected) == len(metas)
        else "matched some"
    )
    hits = loaded.store.search(_VECS[q], k=MAX_RECORDS, where=where)
    got = [h.id for h in hits]
    assert len(got) == len(set(got))
    assert set(got) == expected, (spec, metas)
    for h in hits:  # what comes back is what was written
        assert h.chunk.metadata == metas[_IDS.index(h.id)]
