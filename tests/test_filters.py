"""The filter language: parsing, the reference semantics, the limits and the operands no
store can hold, and the FAISS SQL translation."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, date, datetime
from typing import Any

import pytest

from rag.errors import FilterError
from rag.filters import (
    MAX_CHARS,
    MAX_DEPTH,
    MAX_NODES,
    MAX_STRING,
    MAX_VALUES,
    And,
    Comparison,
    Not,
    Or,
    evaluate,
    fields,
    operators,
    parse,
    require_supported,
    to_json,
    to_timestamp,
)

REC = {
    "tag": "a",
    "n": 3,
    "x": 2.5,
    "flag": True,
    "lang": "日本語",
    "mtime": 1_704_067_200.0,
}  # 2024-01-01


def test_parse_shapes() -> None:
    assert parse(None) is None
    assert parse({}) is None
    assert parse({"tag": "a"}) == Comparison("tag", "$eq", "a")
    assert parse('{"n": {"$gte": 1, "$lt": 5}}') == And(
        (Comparison("n", "$gte", 1), Comparison("n", "$lt", 5))
    )
    assert parse({"a": 1, "b": 2}) == And((Comparison("a", "$eq", 1), Comparison("b", "$eq", 2)))
    assert parse({"$or": [{"a": 1}, {"$not": {"b": 2}}]}) == Or(
        (Comparison("a", "$eq", 1), Not(Comparison("b", "$eq", 2)))
    )
    assert parse({"t": {"$in": ["x", "y"]}}) == Comparison("t", "$in", ("x", "y"))


@pytest.mark.parametrize(
    "bad",
    [
        "not json",
        [1, 2],
        {"$and": []},
        {"$or": {"a": 1}},
        {"$nor": [{"a": 1}]},
        {"a": {"$regex": "x"}},
        {"a": {}},
        {"a": {"$in": []}},
        {"a": {"$in": "x"}},
        {"a": {"$gt": "banana"}},
        {"a": {"$gt": True}},
        {"a": [1, 2]},
        {"a": {"$eq": None}},
        {"bad.name": 1},
        {"trailing ": 1},
        {"1st": 1},
        {"a;drop": 1},
        {"a": float("nan")},
    ],
)
def test_parse_rejects(bad: object) -> None:
    with pytest.raises(FilterError):
        parse(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"tag": "a"}, True),
        ({"tag": "b"}, False),
        ({"n": 3.0}, True),  # numbers compare by value
        ({"flag": True}, True),
        ({"flag": 1}, False),  # booleans only equal booleans
        ({"n": True}, False),
        ({"tag": {"$ne": "b"}}, True),
        ({"missing": {"$ne": "b"}}, False),  # comparisons on missing fields are false...
        ({"missing": {"$nin": ["b"]}}, False),
        ({"$not": {"missing": "b"}}, True),  # ...but negation is plain negation
        ({"n": {"$gt": 2, "$lte": 3}}, True),
        ({"n": {"$lt": 3}}, False),
        ({"tag": {"$gt": 1}}, False),  # a range on a string value is false
        ({"flag": {"$gte": 0}}, False),  # ...and on a boolean value
        ({"lang": {"$in": ["en", "日本語"]}}, True),
        ({"x": {"$in": [1, 2.5]}}, True),
        ({"x": {"$nin": [2.5]}}, False),
        ({"$and": [{"tag": "a"}, {"n": 3}]}, True),
        ({"$or": [{"tag": "z"}, {"n": 4}]}, False),
        ({"$not": {"$or": [{"tag": "z"}, {"n": 4}]}}, True),
        ({"mtime": {"$gte": "2024-01-01"}}, True),
        ({"mtime": {"$gt": "2024-01-01T00:00:00Z"}}, False),
        ({"mtime": {"$lt": "2024-01-01T01:00:00+01:00"}}, False),  # that is midnight UTC
    ],
)
def test_reference_semantics(spec: dict, expected: bool) -> None:
    assert evaluate(parse(spec), REC) is expected


def test_dates() -> None:
    assert to_timestamp("2024-01-01") == 1_704_067_200.0
    assert to_timestamp(date(2024, 1, 1)) == 1_704_067_200.0
    assert to_timestamp(datetime(2024, 1, 1, tzinfo=UTC)) == 1_704_067_200.0
    assert parse({"mtime": {"$gte": datetime(2024, 1, 1)}}) == Comparison(
        "mtime", "$gte", 1_704_067_200.0
    )
    with pytest.raises(FilterError):
        to_timestamp("yesterday")


def test_helpers() -> None:
    flt = parse({"$or": [{"a": 1}, {"$not": {"b": {"$in": [1, 2]}}}], "c": {"$gt": 0}})
    assert fields(flt) == {"a", "b", "c"}
    assert operators(flt) == {"$and", "$or", "$not", "$eq", "$in", "$gt"}
    assert parse(to_json(flt)) == flt
    require_supported(flt, frozenset(operators(flt)), "x")
    with pytest.raises(FilterError, match=r"the demo store cannot express.*\$not"):
        require_supported(flt, frozenset(operators(flt) - {"$not"}), "demo")


def test_fields_follow_the_metadata_key_rule() -> None:
    # Keys such as LangChain's Markdown header fields, and letters of any script.
    assert parse({"Header 1": "Intro"}) == Comparison("Header 1", "$eq", "Intro")
    assert parse({"título": {"$ne": "x"}}) == Comparison("título", "$ne", "x")
    # A tree built by hand meets the same rule as parsed JSON.
    with pytest.raises(FilterError, match="filter field"):
        parse(Comparison("a'; DROP TABLE chunks; --", "$eq", 1))


# --- limits ----------------------------------------------------------------------------------


def _nested(depth: int, leaf: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = leaf or {"a": 1}
    for _ in range(depth):
        spec = {"$not": spec}
    return spec


def _tree(depth: int) -> Any:
    tree: Any = Comparison("a", "$eq", 1)
    for _ in range(depth):
        tree = Not(tree)
    return tree


def test_depth_limit_counts_the_tree() -> None:
    # MAX_DEPTH levels: the comparison is the last one
    assert parse(_nested(MAX_DEPTH - 1)) is not None
    with pytest.raises(FilterError, match="nested too deeply"):
        parse(_nested(MAX_DEPTH))
    # several conditions in one object, or on one field, are an $and: one level more
    for leaf in ({"a": 1, "b": 2}, {"n": {"$gt": 1, "$lt": 5}}):
        assert isinstance(parse(_nested(MAX_DEPTH - 2, leaf)), Not)
        with pytest.raises(FilterError, match="nested too deeply"):
            parse(_nested(MAX_DEPTH - 1, leaf))
    with pytest.raises(FilterError, match="nested too deeply"):
        parse({"$and": [_nested(MAX_DEPTH - 1)]})


@pytest.mark.parametrize("depth", [400, 1_000, 100_000])
def test_deep_nesting_is_a_filter_error_in_every_form(depth: int) -> None:
    """The forms that crashed the process or hit RecursionError ("unexpected error")."""
    text = '{"$not": ' * depth + '{"a": 1}' + "}" * depth
    for spec in (text, _nested(depth), _tree(depth), "[" * depth + "]" * depth):
        with pytest.raises(FilterError):
            parse(spec)


def test_size_limits() -> None:
    assert parse({"$or": [{"a": i} for i in range(MAX_NODES - 1)]}) is not None
    for spec in (
        {"$or": [{"a": i} for i in range(MAX_NODES)]},  # one node too many
        {f"k{i}": i for i in range(MAX_NODES + 1)},
        {"$and": [{"a": 1}] * 10**6},
    ):
        with pytest.raises(FilterError, match="conditions and operators"):
            parse(spec)
    assert parse({"a": {"$in": list(range(MAX_VALUES))}}) is not None
    for spec in (
        {"a": {"$in": list(range(MAX_VALUES + 1))}},
        {"a": {"$in": list(range(MAX_VALUES // 2 + 1))}, "b": {"$nin": list(range(5000))}},
        {"a": {"$in": list(range(10**7))}},
    ):
        with pytest.raises(FilterError, match="operands"):
            parse(spec)
    assert parse({"a": "x" * MAX_STRING}) == Comparison("a", "$eq", "x" * MAX_STRING)
    with pytest.raises(FilterError, match="characters"):
        parse({"a": {"$ne": "x" * (MAX_STRING + 1)}})
    with pytest.raises(FilterError, match="characters of JSON"):
        parse(json.dumps({"a": "x" * MAX_CHARS}))
    many_strings = {"a": {"$in": [f"{i}" + "x" * 60_000 for i in range(20)]}}
    with pytest.raises(FilterError, match="characters of JSON"):
        parse(many_strings)  # as a mapping too
    with pytest.raises(FilterError, match="characters of JSON"):
        parse(And(tuple(Comparison("a", "$eq", "y" * 60_000) for _ in range(20))))


@pytest.mark.parametrize(
    "spec",
    [
        _nested(MAX_DEPTH - 1),
        _nested(MAX_DEPTH - 2, {"a": 1, "b": {"$gte": 2, "$lt": 3}}),
        {"$or": [{"a": i} for i in range(MAX_NODES - 1)]},
        {"x": 1, "y": {"$in": list(range(MAX_VALUES - 1))}},
        {"a": {"$gte": 1, "$lt": 9}, "b": 2, "$or": [{"c": 1}, {"d": {"$ne": 2, "$gt": 0}}]},
    ],
    ids=["deepest", "deepest-and", "widest", "most-values", "mixed"],
)
def test_parse_is_idempotent_within_the_limits(spec: dict) -> None:
    flt = parse(spec)
    assert parse(flt) == flt
    assert parse(to_json(flt)) == flt
    assert parse(json.dumps(to_json(flt))) == flt


# --- operands no store can hold, and malformed input -------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"a": 2**63},
        {"a": -(2**63) - 1},
        {"a": {"$in": [1, 2**64]}},
        {"a": {"$nin": [-(2**70)]}},
        {"a": {"$gte": 2**63}},
        {"a": {"$lt": -(2**100)}},
        {"a": "\ud800"},
        {"a": {"$in": ["ok", "x\udfff"]}},
        {"a": "nul\x00"},
        {"a": {"$ne": "\x00"}},
        {"a\n": 1},
        {1: 2},
        {"a": {1: 2}},
        {None: 1},
        "1" * 5000,  # an integer of too many digits for Python to read
        '{"a": 1e999}',
        '{"a": NaN}',
    ],
    ids=lambda spec: repr(spec)[:40],
)
def test_unstorable_and_malformed_operands_are_filter_errors(spec: object) -> None:
    with pytest.raises(FilterError):
        parse(spec)  # type: ignore[arg-type]


def test_int64_bounds_are_kept() -> None:
    assert parse({"a": 2**63 - 1}) == Comparison("a", "$eq", 2**63 - 1)
    assert parse({"a": {"$gt": -(2**63)}}) == Comparison("a", "$gt", -(2**63))


@pytest.mark.parametrize(
    "tree",
    [
        Comparison("a", "$eq", 2**63),
        Comparison("a", "$in", (1, "\ud800")),
        Comparison("a", "$eq", "x\x00"),
        Comparison("a", "$in", 1),
        Comparison("a", "$gt", "banana"),
        Comparison("a", "$like", 1),
        Comparison("a", ["$eq"], 1),  # type: ignore[arg-type]
        Comparison(1, "$eq", 1),  # type: ignore[arg-type]
        Comparison("a\n", "$eq", 1),
        And(()),
        Or(()),
        Not(Or(())),
        Not("a"),  # type: ignore[arg-type]
        And((Comparison("a", "$eq", 1), {"b": 2})),  # type: ignore[arg-type]
    ],
    ids=repr,
)
def test_hand_built_trees_meet_the_same_rules(tree: Any) -> None:
    with pytest.raises(FilterError):
        parse(tree)


def test_hand_built_trees_come_back_checked() -> None:
    tree = And([Comparison("d", "$gte", "2024-01-01"), Comparison("t", "$in", ["x"])])  # type: ignore[arg-type]
    assert parse(tree) == And(
        (Comparison("d", "$gte", 1_704_067_200.0), Comparison("t", "$in", ("x",)))
    )


def test_wide_filters_stay_within_sqlites_expression_depth() -> None:
    """SQLite reads ``a OR b OR ...`` as a tree as deep as the chain; the translation
    balances it, so the widest filter the parser allows runs."""
    from vectorstores.faiss import to_sql

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE chunks (metadata TEXT)")
    db.executemany("INSERT INTO chunks VALUES (?)", [(json.dumps({"a": i}),) for i in range(5)])
    for spec in (
        {"$or": [{"a": i} for i in range(MAX_NODES - 1)]},
        {"$and": [{"a": {"$ne": i}} for i in range(3, MAX_NODES + 2)]},
    ):
        flt = parse(spec)
        sql, params = to_sql(flt)
        rows = db.execute(f"SELECT metadata FROM chunks WHERE {sql}", params).fetchall()
        assert sorted(json.loads(r[0])["a"] for r in rows) == [
            i for i in range(5) if evaluate(flt, {"a": i})
        ]


def test_superset_drops_marked_comparisons_by_polarity() -> None:
    from rag.filters import superset

    big = parse({"n": 2**60})
    small = parse({"t": "a"})

    def marked(c: Comparison) -> bool:
        return c.field == "n"

    assert superset(big, marked) is True
    assert superset(Not(big), marked) is True  # not (a subset of big, i.e. nothing)
    assert superset(And((big, small)), marked) == small
    assert superset(Or((big, small)), marked) is True
    assert superset(Not(And((big, small))), marked) is True
    assert superset(Not(Or((big, small))), marked) == Not(small)
    assert superset(And((Not(big), Not(Not(big)))), marked) is True
    assert superset(small, marked) == small
