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

What :func:`parse` refuses, whatever the form (JSON text, a mapping, a tree built by hand),
so that no store ever sees it:

* operands no store can hold: integers outside the signed 64-bit range, non-finite numbers,
  strings that are not valid Unicode or hold a NUL (:mod:`rag.contract`'s rule for
  metadata values), and field names that break the metadata key rule;
* filters past limits far above any real use, which would otherwise exhaust the stack or
  the memory of a translator or an engine (a deeply nested ``--where`` crashed the process):

  ======================  =================================================================
  :data:`MAX_DEPTH`       32 levels of ``$and``/``$or``/``$not`` (an object with several
                          conditions, or a field with several operators, is an ``$and``)
  :data:`MAX_NODES`       1,000 conditions and logical operators in all
  :data:`MAX_VALUES`      10,000 operands in all (each item of an ``$in`` list counts)
  :data:`MAX_STRING`      65,536 characters in one string operand
  :data:`MAX_CHARS`       1,000,000 characters of JSON text (for a mapping or a tree:
                          of its field names and string operands together)
  ======================  =================================================================
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, TypeAlias

from rag.contract import INT_MAX, INT_MIN, check_text, key_problem
from rag.errors import ContractError, FilterError
from rag.types import MetadataValue

EQUALITY_OPS = frozenset({"$eq", "$ne"})
RANGE_OPS = frozenset({"$gt", "$gte", "$lt", "$lte"})
MEMBERSHIP_OPS = frozenset({"$in", "$nin"})
COMPARISON_OPS = EQUALITY_OPS | RANGE_OPS | MEMBERSHIP_OPS
LOGICAL_OPS = frozenset({"$and", "$or", "$not"})
ALL_OPS = COMPARISON_OPS | LOGICAL_OPS

MAX_DEPTH = 32
MAX_NODES = 1_000
MAX_VALUES = 10_000
MAX_STRING = 65_536
MAX_CHARS = 1_000_000

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

    ``None`` and ``{}`` mean "no filter". A tree built by hand is checked by the same rules
    and comes back rebuilt from them (date operands as timestamps, lists as tuples). Raises
    :class:`FilterError` with the offending part on any malformed input, and on a filter past
    the limits of the module docstring.
    """
    if spec is None:
        return None
    if isinstance(spec, Comparison | And | Or | Not):
        _check_shape(spec)  # bounded and well-typed, so to_json's recursion is safe
        return _parse_object(to_json(spec), 1, _Budget())
    if isinstance(spec, str):
        if len(spec) > MAX_CHARS:
            raise FilterError(f"a filter is at most {MAX_CHARS:,} characters of JSON")
        try:
            spec = json.loads(spec)
        except RecursionError:
            raise FilterError(f"filter is nested too deeply (at most {MAX_DEPTH} levels)") from None
        except ValueError as e:  # JSONDecodeError, and numbers of too many digits
            raise FilterError(f"filter is not valid JSON: {e}") from e
    if not isinstance(spec, Mapping):
        raise FilterError(f"a filter is a JSON object, not {type(spec).__name__}")
    if not spec:
        return None
    return _parse_object(spec, 1, _Budget())


class _Budget:
    """What a filter has used of the limits so far, so that parsing stops early."""

    __slots__ = ("chars", "nodes", "values")

    def __init__(self) -> None:
        self.nodes = self.values = self.chars = 0

    def node(self, n: int = 1) -> None:
        self.nodes += n
        if self.nodes > MAX_NODES:
            raise FilterError(f"a filter has at most {MAX_NODES:,} conditions and operators")

    def value(self, n: int = 1) -> None:
        self.values += n
        if self.values > MAX_VALUES:
            raise FilterError(f"a filter has at most {MAX_VALUES:,} operands in all")

    def text(self, text: str) -> None:
        self.chars += len(text)
        if self.chars > MAX_CHARS:
            raise FilterError(f"a filter is at most {MAX_CHARS:,} characters of JSON")


def _too_deep() -> FilterError:
    return FilterError(f"filter is nested too deeply (at most {MAX_DEPTH} levels)")


def _check_shape(flt: object) -> None:
    """A tree built by hand: only filter nodes, string fields and operators, within
    :data:`MAX_DEPTH` and :data:`MAX_NODES` (walked without recursion)."""
    stack: list[tuple[object, int]] = [(flt, 1)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if depth > MAX_DEPTH:
            raise _too_deep()
        if nodes > MAX_NODES:
            raise FilterError(f"a filter has at most {MAX_NODES:,} conditions and operators")
        if isinstance(node, And | Or):
            if not isinstance(node.items, tuple | list) or not node.items:
                name = "$and" if isinstance(node, And) else "$or"
                raise FilterError(
                    f"{name} takes a non-empty list of filters, got {_show(node.items)}"
                )
            stack.extend((item, depth + 1) for item in node.items)
        elif isinstance(node, Not):
            stack.append((node.item, depth + 1))
        elif isinstance(node, Comparison):
            _check_field(node.field)
            if not isinstance(node.op, str):
                raise FilterError(f"an operator is a string, not {_show(node.op)}")
        else:
            raise FilterError(f"not a filter node: {type(node).__name__}")


def _parse_object(spec: Any, depth: int, budget: _Budget) -> Filter:
    """The tree for one filter object whose node sits at ``depth``. Depth and nodes are
    counted as in the tree it makes (an object with several keys is an ``$and`` whose
    parts sit one level down), so that ``parse(parse(x)) == parse(x)`` within the limits."""
    if depth > MAX_DEPTH:
        raise _too_deep()
    if not isinstance(spec, Mapping) or not spec:
        raise FilterError(f"expected a non-empty filter object, got {_show(spec)}")
    if len(spec) > MAX_NODES:
        budget.node(len(spec))  # raises before anything is read
    many = len(spec) > 1
    inner = depth + 1 if many else depth
    if inner > MAX_DEPTH:
        raise _too_deep()
    parts: list[Filter] = []
    for key, value in spec.items():
        if not isinstance(key, str):
            raise FilterError(f"a filter field is a string, not {_show(key)}")
        if key in ("$and", "$or"):
            if not isinstance(value, list | tuple) or not value:
                raise FilterError(f"{key} takes a non-empty list of filters, got {_show(value)}")
            budget.node()
            if len(value) > MAX_NODES:
                budget.node(len(value))
            items = tuple(_parse_object(v, inner + 1, budget) for v in value)
            parts.append(And(items) if key == "$and" else Or(items))
        elif key == "$not":
            budget.node()
            parts.append(Not(_parse_object(value, inner + 1, budget)))
        elif key.startswith("$"):
            raise FilterError(f"unknown operator {_show(key)} at the top of a filter")
        else:
            parts.extend(_parse_field(key, value, inner, budget, alone=not many))
    if len(parts) == 1:
        return parts[0]
    budget.node()  # the $and that holds the parts
    return And(tuple(parts))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 3, 80, 80, 5, 5


def _show(value: Any) -> str:
    """``repr`` cut short, without building the whole of it: error messages quote what was
    wrong, not all of it."""
    return _REPR.repr(value)


def _check_field(field: object) -> None:
    problem = key_problem(field)
    if problem:
        raise FilterError(_cut(problem.replace("metadata key", "filter field", 1)))


def _cut(message: str) -> str:
    return message if len(message) <= 400 else message[:400] + "..."


def _parse_field(
    field: str, value: Any, depth: int, budget: _Budget, *, alone: bool
) -> list[Filter]:
    """The comparisons on ``field``; several operators on a field that is ``alone`` in its
    object make an ``$and`` at ``depth``, and the comparisons sit one level down."""
    _check_field(field)
    if not isinstance(value, Mapping):
        budget.node()
        budget.value()
        budget.text(field)
        return [Comparison(field, "$eq", _scalar(field, "$eq", value, budget))]
    if not value:
        raise FilterError(f"empty operator object for field {field!r}")
    if alone and len(value) > 1:
        depth += 1
        if depth > MAX_DEPTH:
            raise _too_deep()
    out: list[Filter] = []
    for op, operand in value.items():
        if op not in COMPARISON_OPS:
            raise FilterError(
                f"unknown operator {_show(op)} on field {field!r}; "
                f"known: {', '.join(sorted(COMPARISON_OPS))}"
            )
        budget.node()
        budget.text(field)
        if op in MEMBERSHIP_OPS:
            if not isinstance(operand, list | tuple) or not operand:
                raise FilterError(f"{op} on {field!r} takes a non-empty list, got {_show(operand)}")
            budget.value(len(operand))
            out.append(Comparison(field, op, tuple(_scalar(field, op, v, budget) for v in operand)))
        elif op in RANGE_OPS:
            budget.value()
            out.append(Comparison(field, op, _range_operand(field, op, operand)))
        else:
            budget.value()
            out.append(Comparison(field, op, _scalar(field, op, operand, budget)))
    return out


def _scalar(field: str, op: str, value: Any, budget: _Budget | None = None) -> MetadataValue:
    """An operand every store can hold: what the metadata rule allows as a value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise FilterError(
                f"{op} on {field!r}: a string operand is at most {MAX_STRING:,} characters"
            )
        if budget is not None:
            budget.text(value)
        try:
            check_text(value, what=f"{op} on {field!r}: the operand")
        except ContractError as e:
            raise FilterError(str(e)) from None
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise FilterError(
                f"{op} on {field!r}: {_show(value)} is outside the signed 64-bit range that "
                "metadata values keep; no stored value can match it"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FilterError(f"{op} on {field!r}: {value!r} is not a finite number")
        return value
    if isinstance(value, datetime | date):
        return to_timestamp(value)
    raise FilterError(f"{op} on {field!r}: {_show(value)} is not a string, number or boolean")


def _range_operand(field: str, op: str, value: Any) -> float | int:
    if isinstance(value, bool):
        raise FilterError(f"{op} on {field!r} compares numbers or dates, not booleans")
    if isinstance(value, int | float | datetime | date):
        return _scalar(field, op, value)  # type: ignore[return-value]
    if isinstance(value, str) and len(value) <= 64 and _ISO_DATE.match(value.strip()):
        return to_timestamp(value.strip())
    raise FilterError(f"{op} on {field!r} compares numbers or dates (ISO 8601), not {_show(value)}")


def to_timestamp(value: datetime | date | str) -> float:
    """POSIX seconds for a date, a datetime or an ISO 8601 string; naive means UTC."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as e:
            raise FilterError(f"{_show(value)} is not an ISO 8601 date") from e
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


def superset(flt: Filter, inexact: Callable[[Comparison], bool]) -> Filter | bool:
    """A filter without the comparisons ``inexact`` marks that matches at least what ``flt``
    matches: ``True`` for everything, ``False`` for nothing.

    For a translator whose engine compares some operands inexactly (numbers past 2**53, say):
    it asks the engine for this superset and keeps the candidates :func:`evaluate` accepts.
    A marked comparison becomes "everything" where it counts for a match and "nothing" under
    an odd number of ``$not``, so every record ``flt`` matches is still a candidate.
    """
    return _superset(flt, inexact, True)


def _superset(flt: Filter, inexact: Callable[[Comparison], bool], wide: bool) -> Filter | bool:
    # ``wide``: a superset of flt is wanted; otherwise a subset (below an odd number of $not).
    if isinstance(flt, Comparison):
        return wide if inexact(flt) else flt
    if isinstance(flt, Not):
        inner = _superset(flt.item, inexact, not wide)
        return (not inner) if isinstance(inner, bool) else Not(inner)
    items = [_superset(f, inexact, wide) for f in flt.items]
    absorbing = isinstance(flt, Or)  # True absorbs an $or, False an $and
    if any(item is absorbing for item in items):
        return absorbing
    rest = [item for item in items if not isinstance(item, bool)]
    if not rest:
        return not absorbing
    if len(rest) == 1:
        return rest[0]
    return Or(tuple(rest)) if absorbing else And(tuple(rest))  # type: ignore[arg-type]


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
