"""The portable filter language translated to Chroma's ``where`` clauses.

Chroma's ``where`` language differs from ragkit's in ways that :func:`to_where` compensates
for, each checked against the engine (``tests/test_chroma.py`` runs a differential test):

* ``$ne`` and ``$nin`` also match records that lack the field, so every record carries an
  internal list of its field names (:data:`KEYS`) and these operators add "the field is
  present".
* Chroma has no ``$not``, so negation is pushed down to the leaves with De Morgan's laws,
  which needs "the field is not a number" as well (:data:`NUM` lists the numeric fields).
* Chroma truncates a float operand compared with an integer field (``{"n": 2.5}`` matches
  ``n == 2``), so an operand with a fractional part is rewritten with integer bounds.

* Chroma compares an integer with a float past 2**53 inexactly (``2**63 - 1`` equals the
  float ``2.0**63`` there, and ``1e20`` equals ``2**63 - 1``). A comparison with a number of
  that size (:func:`inexact_in_chroma`) is not sent to Chroma: the store asks Chroma for a
  superset without it (:func:`rag.filters.superset`) and keeps what the reference evaluator
  accepts, so such filters cost an exact scan of the candidates.
* Chroma's SQLite refuses an expression nested past 1,000 levels, and reads a list of
  clauses as a chain as deep as the list is long: long lists are nested in groups of 16.

The rest already holds in Chroma: equality is type-aware (``1`` does not match ``True``,
``2`` matches ``2.0``), range operators only match numbers, and any key the metadata rule
allows ("Header 1", "título") is a field name as it is. The internal lists are named with
a ``:``, which no user key can hold, so they never collide with the user's fields.
"""

from __future__ import annotations

import math
from typing import Any

from rag.filters import And, Comparison, Filter, Not, Or, walk

#: The record's field names, so that "field is present" is expressible.
KEYS = "ragkit:keys"
#: Its numeric fields, so that "field is not a number" is expressible.
NUM = "ragkit:num"


#: Chroma compares numbers exactly up to here (a double holds every integer up to 2**53).
_EXACT = 2**53


def inexact_in_chroma(c: Comparison) -> bool:
    """Whether Chroma may answer ``c`` wrongly: a numeric operand past 2**53."""
    operands = c.value if isinstance(c.value, tuple) else (c.value,)
    return any(
        isinstance(v, int | float) and not isinstance(v, bool) and abs(v) >= _EXACT
        for v in operands
    )


def exact_in_chroma(flt: Filter) -> bool:
    """Whether Chroma answers every comparison of ``flt`` exactly."""
    return not any(isinstance(n, Comparison) and inexact_in_chroma(n) for n in walk(flt))


def to_where(flt: Filter, *, negate: bool = False) -> dict[str, Any]:
    """A Chroma ``where`` clause with the reference semantics of ``flt`` (or of its
    negation): ``$not`` is pushed down to the leaves with De Morgan's laws."""
    if isinstance(flt, Not):
        return to_where(flt.item, negate=not negate)
    if isinstance(flt, And | Or):
        items = [to_where(f, negate=negate) for f in flt.items]
        conjunction = isinstance(flt, And) != negate
        return _join("$and" if conjunction else "$or", items)
    return _negated(flt) if negate else _positive(flt)


#: The most clauses under one $and / $or: Chroma's SQLite reads a list of n clauses as a
#: tree n deep, and refuses one past 1,000 levels, so longer lists are nested in groups.
_FAN_OUT = 16


def _join(op: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    # Chroma wants at least two clauses under $and / $or; nested ones of the same kind merge.
    flat: list[dict[str, Any]] = []
    for item in items:
        flat.extend(item[op] if set(item) == {op} else [item])
    while len(flat) > _FAN_OUT:
        groups = [flat[i : i + _FAN_OUT] for i in range(0, len(flat), _FAN_OUT)]
        flat = [g[0] if len(g) == 1 else {op: g} for g in groups]
    return flat[0] if len(flat) == 1 else {op: flat}


def _present(field: str) -> dict[str, Any]:
    return {KEYS: {"$contains": field}}


def _absent(field: str) -> dict[str, Any]:
    return {KEYS: {"$not_contains": field}}


def _not_number(field: str) -> dict[str, Any]:  # missing, a string or a boolean
    return {NUM: {"$not_contains": field}}


def _typed_groups(values: tuple[Any, ...]) -> list[list[Any]]:
    # Chroma wants one type per $in list; bool before int, since bool is an int in Python.
    groups: dict[type, list[Any]] = {}
    for v in values:
        kind = bool if isinstance(v, bool) else type(v)
        groups.setdefault(kind, []).append(v)
    return list(groups.values())


# Chroma compares an integer field with a float operand after truncating the operand to an
# integer: {"n": 2.5} matches n == 2, {"n": {"$gte": 2.5}} matches n == 2. Integer operands
# compare correctly with both kinds of field. So an operand with a fractional part is
# rewritten: integers are decided by integer bounds, and the native operator only runs in the
# band strictly between the integers around the operand, where no integer lies.


def _fractional(v: Any) -> bool:
    return isinstance(v, float) and not v.is_integer()


def _band(field: str, v: float) -> list[dict[str, Any]]:
    lo = math.floor(v)
    return [{field: {"$gt": lo}}, {field: {"$lt": lo + 1}}]


def _eq(field: str, v: Any) -> dict[str, Any]:
    if _fractional(v):
        return _join("$and", [*_band(field, v), {field: {"$eq": v}}])
    return {field: {"$eq": v}}


def _not_eq(field: str, v: Any) -> dict[str, Any]:
    """Not equal, or missing: Chroma's own ``$ne``."""
    if _fractional(v):
        lo = math.floor(v)
        inside = _join("$and", [*_band(field, v), {field: {"$ne": v}}])
        return _join(
            "$or", [{field: {"$lte": lo}}, {field: {"$gte": lo + 1}}, _not_number(field), inside]
        )
    return {field: {"$ne": v}}


def _range(field: str, op: str, v: Any) -> dict[str, Any]:
    # Chroma's range operators match numbers only (not booleans or strings), as the
    # reference does.
    if _fractional(v):
        lo = math.floor(v)
        integers = {field: {"$gte": lo + 1}} if op in ("$gt", "$gte") else {field: {"$lte": lo}}
        return _join("$or", [integers, _join("$and", [*_band(field, v), {field: {op: v}}])])
    return {field: {op: v}}


def _in(field: str, values: tuple[Any, ...]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    for group in _typed_groups(values):
        plain = [v for v in group if not _fractional(v)]
        if plain:
            parts.append({field: {"$in": plain}})
        parts.extend(_eq(field, v) for v in group if _fractional(v))
    return _join("$or", parts)


def _not_in(field: str, values: tuple[Any, ...]) -> dict[str, Any]:
    """In none of ``values``, or missing: Chroma's own ``$nin``."""
    parts: list[dict[str, Any]] = []
    for group in _typed_groups(values):
        plain = [v for v in group if not _fractional(v)]
        if plain:
            parts.append({field: {"$nin": plain}})
        parts.extend(_not_eq(field, v) for v in group if _fractional(v))
    return _join("$and", parts)


_OPPOSITE = {"$gt": "$lte", "$gte": "$lt", "$lt": "$gte", "$lte": "$gt"}


def _positive(c: Comparison) -> dict[str, Any]:
    f, v = c.field, c.value
    if c.op == "$eq":
        return _eq(f, v)
    if c.op == "$ne":  # Chroma's $ne also matches records without the field
        return _join("$and", [_not_eq(f, v), _present(f)])
    if c.op == "$in":
        return _in(f, v)  # type: ignore[arg-type]
    if c.op == "$nin":
        return _join("$and", [_not_in(f, v), _present(f)])  # type: ignore[arg-type]
    return _range(f, c.op, v)


def _negated(c: Comparison) -> dict[str, Any]:
    f, v = c.field, c.value
    if c.op == "$eq":
        return _not_eq(f, v)
    if c.op == "$ne":
        return _join("$or", [_eq(f, v), _absent(f)])
    if c.op == "$in":
        return _not_in(f, v)  # type: ignore[arg-type]
    if c.op == "$nin":
        return _join("$or", [_in(f, v), _absent(f)])  # type: ignore[arg-type]
    # not (f > v): f is a number <= v, or f is missing or not a number
    return _join("$or", [_range(f, _OPPOSITE[c.op], v), _not_number(f)])
