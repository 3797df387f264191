"""Metadata filters evaluated over in-memory columns, for the FAISS store.

The FAISS store keeps metadata as JSON in SQLite. Translating a filter to SQL works at any
size but reads and parses every row's JSON on every query: 13 ms at 10k rows, 1.3 s at 1M
(the vector-store sweep, ``docs/benchmarks.md``). :class:`ColumnCache` instead reads each
field a filter uses once, into numpy arrays (a type code, the number, the string as a code
into a vocabulary), and evaluates filters over those with the reference semantics of
:func:`rag.filters.evaluate`. The columns belong to one write generation of the
collection: the first filtered query after a write reads them again.

Integers are held as float64, which is exact up to 2**53; a field holding a larger integer,
or a filter comparing with one, is answered by SQL (:meth:`ColumnCache.rows` returns None).

Fields are addressed by :func:`json_path`, which quotes the key (``$."Header 1"``): the
metadata rule allows spaces, ``-`` and letters of any script, which an unquoted SQLite JSON
path does not take, and no double quote or backslash, so quoting needs no escapes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rag.contract import key_problem
from rag.errors import FilterError
from rag.filters import And, Comparison, Filter, Not, Or

# Type codes: what json_type() says of the field in a row's metadata.
MISSING, NUMBER, TEXT, TRUE, FALSE, OTHER = 0, 1, 2, 3, 4, 5
_KINDS = {None: MISSING, "null": MISSING, "integer": NUMBER, "real": NUMBER, "text": TEXT}
_KINDS |= {"true": TRUE, "false": FALSE, "array": OTHER, "object": OTHER}
_EXACT = 2**53  # float64 holds every integer up to this exactly

_RANGE: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "$gt": np.greater,
    "$gte": np.greater_equal,
    "$lt": np.less,
    "$lte": np.less_equal,
}


def json_path(field: str) -> str:
    """The SQLite JSON path of a metadata key: ``$."key"``, passed as a query parameter."""
    problem = key_problem(field)
    if problem:  # parse() checks fields already; a hand-made tree must not reach SQL either
        raise FilterError(problem)
    return f'$."{field}"'


class _Inexact(Exception):
    """A number float64 cannot hold exactly: let SQL answer."""


@dataclass(frozen=True, slots=True)
class Column:
    """One metadata field over every row, in rowid order."""

    kind: np.ndarray  # int8 type codes
    number: np.ndarray  # float64; NaN where the value is not a number
    text: np.ndarray  # int32 codes into ``vocab``; -1 where the value is not a string
    vocab: dict[str, int]
    exact: bool  # every number in the field is exact as a float64

    @classmethod
    def read(cls, db: sqlite3.Connection, field: str) -> tuple[np.ndarray, Column]:
        """``(rowids, column)`` for ``field`` (a key by the metadata rule)."""
        path = json_path(field)
        rows = db.execute(
            "SELECT rowid, json_type(metadata, ?), json_extract(metadata, ?) "
            "FROM chunks ORDER BY rowid",
            (path, path),
        ).fetchall()
        n = len(rows)
        rowids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=n)
        kind = np.fromiter((_KINDS[r[1]] for r in rows), dtype=np.int8, count=n)
        number = np.full(n, np.nan)
        text = np.full(n, -1, dtype=np.int32)
        vocab: dict[str, int] = {}
        exact = True
        for i in np.flatnonzero(kind == NUMBER).tolist():
            value = rows[i][2]
            if isinstance(value, int) and abs(value) > _EXACT:
                exact = False
            number[i] = value
        for i in np.flatnonzero(kind == TEXT).tolist():
            text[i] = vocab.setdefault(rows[i][2], len(vocab))
        return rowids, cls(kind, number, text, vocab, exact)


class ColumnCache:
    """The columns of one collection at one write generation."""

    def __init__(self) -> None:
        self._generation: int | None = None
        self._rowids: np.ndarray | None = None
        self._columns: dict[str, Column] = {}

    def rows(self, db: sqlite3.Connection, generation: int, flt: Filter) -> np.ndarray | None:
        """The rowids matching ``flt``, ascending, or None where SQL must answer.

        ``generation`` must be the collection's write generation as read inside the caller's
        transaction (or under its lock), so the columns read here belong to it."""
        if generation != self._generation:
            self._generation, self._rowids, self._columns = generation, None, {}
        try:
            mask = self._eval(db, flt)
        except _Inexact:
            return None
        assert self._rowids is not None
        return self._rowids[mask]

    def _column(self, db: sqlite3.Connection, field: str) -> Column:
        col = self._columns.get(field)
        if col is None:
            rowids, col = Column.read(db, field)
            if self._rowids is None:
                self._rowids = rowids
            elif not np.array_equal(rowids, self._rowids):  # the rows changed under us
                self._columns = {}
                self._rowids = rowids
            self._columns[field] = col
        if not col.exact:
            raise _Inexact
        return col

    def _eval(self, db: sqlite3.Connection, flt: Filter) -> np.ndarray:
        if isinstance(flt, And | Or):
            masks = [self._eval(db, f) for f in flt.items]
            combine = np.logical_and if isinstance(flt, And) else np.logical_or
            return combine.reduce(masks) if len(masks) > 1 else masks[0]
        if isinstance(flt, Not):
            return ~self._eval(db, flt.item)
        return self._comparison(self._column(db, flt.field), flt)

    @staticmethod
    def _comparison(col: Column, c: Comparison) -> np.ndarray:
        if c.op in _RANGE:
            value = _number(c.value)
            with np.errstate(invalid="ignore"):  # NaN (not a number) compares false
                return (col.kind == NUMBER) & _RANGE[c.op](col.number, value)
        operands = c.value if isinstance(c.value, tuple) else (c.value,)
        match = np.zeros(col.kind.shape, dtype=bool)
        for v in operands:
            if isinstance(v, bool):
                match |= col.kind == (TRUE if v else FALSE)
            elif isinstance(v, int | float):
                match |= (col.kind == NUMBER) & (col.number == _number(v))
            elif isinstance(v, str):
                code = col.vocab.get(v)
                if code is not None:
                    match |= col.text == code
        if c.op in ("$eq", "$in"):
            return match
        return (col.kind != MISSING) & ~match  # $ne, $nin: the field must be there


def _number(value: object) -> float:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT:
        raise _Inexact
    return float(value)  # type: ignore[arg-type]
