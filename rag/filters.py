"""The portable metadata filter language.

One language for every backend. Its JSON form (what ``rag search --where`` takes)::

    {"source": "guide.md"}                       equality (shorthand for $eq)
    {"page": {"$gte": 2, "$lt": 10}}             several operators on a field: all must hold
    {"lang": {"$in": ["en", "de"]}}              membership ($in / $nin)
    {"mtime": {"$gte": "2024-01-01"}}            dates: ISO 8601 strings or datetime objects
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}
    {"a": 1, "b": 2}                             several keys: all must hold

Operators: ``$eq $ne $gt $gte $lt $lte $in $nin``, combinators ``$and $or $not``.

Semantics, which :func:`evaluate` implements and every backend must match:

* A comparison on a field the record does not have is false, whatever the operator
  (``$ne`` and ``$nin`` included). ``$not`` is plain logical negation, so
  ``{"$not": {"a": 1}}`` matches records without ``a``.
* Equality is type-aware: numbers compare by value (``2 == 2.0``), strings with strings,
  booleans only with booleans (``True`` is not ``1``).
* Range operators compare numbers. A date operand (``datetime``, ``date`` or an ISO 8601
  string) is turned into POSIX seconds (UTC when no zone is given), so date fields are stored
  as timestamps, like ``mtime``. A range on a string or boolean field value is false.

:func:`evaluate` is the reference implementation and the test oracle for the backends'
translators. A translator that cannot express an operator raises :class:`FilterError`;
nothing is ever dropped silently.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeAlias

from rag.contract import key_problem
from rag.errors import FilterError
from rag.types import MetadataValue

EQUALITY_OPS = frozenset({"$eq", "$ne"})
RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
MEMBERSHIP_OPS = frozenset({"$in", "$nin"})
COMPARISON_OPS = EQUALITY_OPS | RANGE_OPS | MEMBERSHIP_OPS
LOGICAL_OPS = frozenset({"$and", "$or", "$not"})
ALL_OPS = COMPARISON_OPS | LOGICAL_OPS

_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ][0-9:.]+(Z|[+-]\d{2}:?\d{2})?)?$")


@dataclass(frozen=True, slots=True)
class Comparison:
    """``field op value``. For ``$in``/``$nin`` the value is a tuple of scalars."""

    field: str
    op: str
    value: MetadataValue | tuple[MetadataValue, ...]


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Filter


Filter: TypeAlias = Comparison | And | Or | Not


# --- parsing -------------------------------------------------------------------------------


def parse(spec: Filter | Mapping[str, Any] | str | None) -> Filter | None:
    """Turn the JSON form (a mapping or a JSON string) into a :data:`Filter` tree.

    ``None`` and ``{}`` mean "no filter". Raises :class:`FilterError` with the offending
    part on any malformed input.
    """
    if spec is None:
        return None
    if isinstance(spec, Comparison | And | Or | Not):
        for node in walk(spec):  # a tree built by hand meets the same rules as parsed JSON
            if isinstance(node, Comparison):
                _check_field(node.field)
        return spec
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise FilterError(f"filter is not valid JSON: {e}") from e
    if not isinstance(spec, Mapping):
        raise FilterError(f"a filter is a JSON object, not {type(spec).__name__}")
    if not spec:
        return None
    return _parse_object(spec)


def _parse_object(spec: Mapping[str, Any]) -> Filter:
    if not isinstance(spec, Mapping) or not spec:
        raise FilterError(f"expected a non-empty filter object, got {spec!r}")
    parts: list[Filter] = []
    for key, value in spec.items():
        if key in ("$and", "$or"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters, got {value!r}")
            items = tuple(_parse_object(v) for v in value)
            parts.append(And(items) if key == "$and" else Or(items))
        elif key == "$not":
            parts.append(Not(_parse_object(value)))
        elif key.startswith("$"):
            raise FilterError(f"unknown operator {key!r} at the top of a filter")
        else:
            parts.extend(_parse_field(key, value))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _check_field(field: object) -> None:
    problem = key_problem(field)
    if problem:
        raise FilterError(problem.replace("metadata key", "filter field", 1))


def _parse_field(field: str, value: Any) -> list[Filter]:
    _check_field(field)
    if not isinstance(value, Mapping):
        return [Comparison(field, "$eq", _scalar(field, "$eq", value))]
    if not value:
        raise FilterError(f"empty operator object for field {field!r}")
    out: list[Filter] = []
    for op, operand in value.items():
        if op not in COMPARISON_OPS:
            raise FilterError(
                f"unknown operator {op!r} on field {field!r}; "
                f"known: {', '.join(sorted(COMPARISON_OPS))}"
            )
        if op in MEMBERSHIP_OPS:
            if not isinstance(operand, list | tuple) or not operand:
                raise FilterError(f"{op} on {field!r} takes a non-empty list, got {operand!r}")
            out.append(Comparison(field, op, tuple(_scalar(field, op, v) for v in operand)))
        elif op in RANGE_OPS:
            out.append(Comparison(field, op, _range_operand(field, op, operand)))
        else:
            out.append(Comparison(field, op, _scalar(field, op, operand)))
    return out


def _scalar(field: str, op: str, value: Any) -> MetadataValue:
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise FilterError(f"{op} on {field!r}: {value!r} is not a finite number")
        return value
    if isinstance(value, datetime | date):
        return to_timestamp(value)
    raise FilterError(f"{op} on {field!r}: {value!r} is not a string, number or boolean")


def _range_operand(field: str, op: str, value: Any) -> float | int:
    if isinstance(value, bool):
        raise FilterError(f"{op} on {field!r} compares numbers or dates, not booleans")
    if isinstance(value, int | float):
        return _scalar(field, op, value)  # type: ignore[return-value]
    if isinstance(value, datetime | date):
        return to_timestamp(value)
    if isinstance(value, str) and _ISO_DATE.match(value.strip()):
        return to_timestamp(value.strip())
    raise FilterError(f"{op} on {field!r} compares numbers or dates (ISO 8601), not {value!r}")


def to_timestamp(value: datetime | date | str) -> float:
    """POSIX seconds for a date, a datetime or an ISO 8601 string; naive means UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise FilterError(f"{value!r} is not an ISO 8601 date") from e
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# --- the reference evaluator ---------------------------------------------------------------


def evaluate(flt: Filter | None, metadata: Mapping[str, Any]) -> bool:
    """Whether a record with ``metadata`` matches ``flt``: the reference semantics."""
    if flt is None:
        return True
    if isinstance(flt, And):
        return all(evaluate(f, metadata) for f in flt.items)
    if isinstance(flt, Or):
        return any(evaluate(f, metadata) for f in flt.items)
    if isinstance(flt, Not):
        return not evaluate(flt.item, metadata)
    if flt.field not in metadata or metadata[flt.field] is None:
        return False
    actual = metadata[flt.field]
    op, operand = flt.op, flt.value
    if op == "$eq":
        return values_equal(actual, operand)
    if op == "$ne":
        return not values_equal(actual, operand)
    if op == "$in":
        return any(values_equal(actual, v) for v in operand)  # type: ignore[union-attr]
    if op == "$nin":
        return not any(values_equal(actual, v) for v in operand)  # type: ignore[union-attr]
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return False
    if op == "$gt":
        return actual > operand  # type: ignore[operator]
    if op == "$gte":
        return actual >= operand  # type: ignore[operator]
    if op == "$lt":
        return actual < operand  # type: ignore[operator]
    return actual <= operand  # type: ignore[operator]


def values_equal(a: Any, b: Any) -> bool:
    """Type-aware equality: booleans only equal booleans, numbers compare by value."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


# --- helpers for translators ---------------------------------------------------------------


def walk(flt: Filter) -> Iterator[Filter]:
    """Every node of the tree, depth first."""
    yield flt
    if isinstance(flt, And | Or):
        for item in flt.items:
            yield from walk(item)
    elif isinstance(flt, Not):
        yield from walk(flt.item)


def fields(flt: Filter | None) -> set[str]:
    """The metadata fields a filter reads (to create payload indexes, say)."""
    if flt is None:
        return set()
    return {node.field for node in walk(flt) if isinstance(node, Comparison)}


def operators(flt: Filter | None) -> set[str]:
    """Every operator a filter uses, comparison and logical."""
    if flt is None:
        return set()
    ops: set[str] = set()
    for node in walk(flt):
        if isinstance(node, Comparison):
            ops.add(node.op)
        elif isinstance(node, And):
            ops.add("$and")
        elif isinstance(node, Or):
            ops.add("$or")
        else:
            ops.add("$not")
    return ops


def require_supported(flt: Filter | None, supported: frozenset[str], backend: str) -> None:
    """Raise :class:`FilterError` if ``flt`` uses an operator ``backend`` cannot express."""
    missing = operators(flt) - supported
    if missing:
        raise FilterError(
            f"the {backend} store cannot express the filter operator(s) "
            f"{', '.join(sorted(missing))}; use another store or rewrite the filter"
        )


def to_json(flt: Filter | None) -> dict[str, Any]:
    """The JSON form of a filter tree (the inverse of :func:`parse`)."""
    if flt is None:
        return {}
    if isinstance(flt, And):
        return {"$and": [to_json(f) for f in flt.items]}
    if isinstance(flt, Or):
        return {"$or": [to_json(f) for f in flt.items]}
    if isinstance(flt, Not):
        return {"$not": to_json(flt.item)}
    value = list(flt.value) if isinstance(flt.value, tuple) else flt.value
    return {flt.field: {flt.op: value}}
