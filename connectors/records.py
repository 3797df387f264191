"""JSON and JSON Lines files as records: one document per record, with the standard
library's :mod:`json`.

What is a record:

* ``.jsonl``: each non-blank line is one record; its documents carry ``line`` (counting
  from 1, blank lines included, as an editor shows it). One line that is not JSON fails
  the whole file, naming the line and how many others are bad: a data file read in part
  would look complete in the collection, and the fix (or an ``--exclude``) is the user's.
* ``.json``: a top-level array gives one record per element, with ``record`` (its
  position, from 1); anything else (an object, a string) is one record. An object that
  wraps an array (``{"items": [...]}``) is one record too: which key holds the records is
  a guess this parser does not make.

Which text a record gives:

* With a field chosen (the ``json_field`` source option, ``--json-field body``): the
  value of that field. A name is first looked up as it is, then as a dotted path into
  nested objects (``meta.summary``). A record without the field gives no document; a file
  in which no record has it fails with that reason, so a mistyped name is never silent.
* Otherwise: the first of :data:`TEXT_FIELDS` (``text``, ``content``, ``body``) that the
  record holds as a non-empty string; else the whole record flattened, one
  ``key: value`` line per scalar, nested keys joined with dots and list items numbered
  (``authors.1: Ann``), so that every value can be found.

A string record is its own text. A field whose value is a list of strings gives them one
per line; any other non-string value is flattened as above.

A record's title is the first of :data:`TITLE_FIELDS` it holds as a short string, else the
file name stem. No other field becomes metadata: field names of arbitrary data may be
anything, and would collide with the connector's own keys (``source``, ``title``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from connectors.parsers import Parsed, decode_text, normalize_text, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

#: Fields taken as a record's text, first present first, when none is chosen.
TEXT_FIELDS = ("text", "content", "body")
#: Fields taken as a record's title, first present first.
TITLE_FIELDS = ("title", "name", "subject", "headline")
#: Longest value taken as a title (a longer "name" is content, not a title).
MAX_TITLE_CHARS = 200
#: Nesting below which a flattened record is cut off (json itself stops near 1,000).
MAX_DEPTH = 32

_MISSING = object()


def _lookup(record: dict[str, Any], field: str) -> Any:
    """``record[field]``, else the value at the dotted path ``field``, else ``_MISSING``."""
    if field in record:
        return record[field]
    value: Any = record
    for part in field.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return " ".join(value.split())
    return json.dumps(value)


def _flatten(value: Any, prefix: str = "", depth: int = 0) -> Iterator[str]:
    """``key: value`` lines for every scalar below ``value`` (empty strings left out)."""
    if isinstance(value, dict | list) and depth >= MAX_DEPTH:
        yield f"{prefix or 'value'}: ..."
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key), depth + 1)
    elif isinstance(value, list):
        for n, item in enumerate(value, 1):
            yield from _flatten(item, f"{prefix}.{n}" if prefix else str(n), depth + 1)
    elif value != "":
        text = _scalar(value)
        yield f"{prefix}: {text}" if prefix else text


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return "\n".join(_flatten(value))


def _text(record: Any, field: str | None) -> str | None:
    """The text of one record (see the module docstring); ``None`` when ``field`` is chosen
    and the record lacks it."""
    if field is not None:
        value = _lookup(record, field) if isinstance(record, dict) else _MISSING
        return None if value is _MISSING else _as_text(value)
    if isinstance(record, dict):
        for name in TEXT_FIELDS:
            value = record.get(name)
            if isinstance(value, str) and value.strip():
                return value
    return _as_text(record)


def _title(record: Any, stem: str) -> str:
    if isinstance(record, dict):
        for name in TITLE_FIELDS:
            value = record.get(name)
            if isinstance(value, str) and value.strip() and len(value) <= MAX_TITLE_CHARS:
                return " ".join(value.split())
    return stem


def _documents(
    records: list[tuple[Any, dict[str, MetadataValue]]], stem: str, field: str | None
) -> list[Parsed]:
    parsed = []
    for record, extra in records:
        text = _text(record, field)
        if text is not None:
            parsed.append(Parsed(normalize_text(text), _title(record, stem), "text", extra))
    if field is not None and not parsed and records:
        raise IngestError(f"no record has the field {field!r} (chosen with json_field)")
    return parsed


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError("nested too deeply") from e


def _json_error(e: Exception, *, one_line: bool = False) -> str:
    if isinstance(e, json.JSONDecodeError):
        where = f"column {e.colno}" if one_line else f"line {e.lineno}, column {e.colno}"
        return f"{e.msg} at {where}"
    return short_message(e)


def parse_json(data: bytes, stem: str, *, field: str | None = None) -> list[Parsed]:
    """A JSON file: one document per element of a top-level array, else one document."""
    text, encoding = decode_text(data)
    try:
        value = _loads(text)
    except ValueError as e:
        raise IngestError(f"malformed JSON: {_json_error(e)}") from e
    common: dict[str, MetadataValue] = {"encoding": encoding} if encoding else {}
    if isinstance(value, list):
        records = [(item, {**common, "record": n}) for n, item in enumerate(value, 1)]
    else:
        records = [(value, common)]
    return _documents(records, stem, field)


def parse_jsonl(data: bytes, stem: str, *, field: str | None = None) -> list[Parsed]:
    """A JSON Lines file: one document per non-blank line, with its ``line`` number."""
    text, encoding = decode_text(data)
    common: dict[str, MetadataValue] = {"encoding": encoding} if encoding else {}
    records: list[tuple[Any, dict[str, MetadataValue]]] = []
    bad: list[tuple[int, Exception]] = []
    # Only "\n" ends a record: str.splitlines() would also split at U+2028 inside a string.
    for number, line in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        if not line.strip():
            continue
        try:
            records.append((_loads(line), {**common, "line": number}))
        except ValueError as e:
            bad.append((number, e))
    if bad:
        number, error = bad[0]
        others = f"; {len(bad) - 1} more bad line(s)" if len(bad) > 1 else ""
        raise IngestError(
            f"malformed JSONL: line {number} is not JSON "
            f"({_json_error(error, one_line=True)}){others}"
        ) from error
    return _documents(records, stem, field)
