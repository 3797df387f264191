"""The filter language: parsing, the reference semantics, and the FAISS SQL translation."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from rag.errors import FilterError
from rag.filters import (
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
