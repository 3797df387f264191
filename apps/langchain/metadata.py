"""LangChain metadata in ragkit's metadata model, and back, unchanged.

LangChain documents carry any JSON-like metadata: lists (``"languages": ["eng"]``), nested
objects (``"coordinates": {...}``), ``None``, keys of any shape. A ragkit store holds what
the rule of :mod:`rag.contract` allows, the same on every store: scalar values under keys
such as ``"Header 1"``. :func:`encode` keeps every entry the rule allows as it is (stored,
and filterable with ragkit's filter language, on every store) and writes the rest, as one
JSON object, under the reserved key :data:`RESERVED`; :func:`decode` puts them back.

What goes into the JSON object, and why:

* values the rule refuses: lists, tuples (they come back as lists), objects, ``None``,
  integers outside 64 bits, NaN and infinities, strings with a NUL;
* entries whose key breaks the rule (``"1st"``, ``""``, a key over 64 characters) and
  :data:`RESERVED` itself, so that decoding is never ambiguous;
* floats of 15 or more significant digits, *as well as* natively: qdrant-edge 0.9 and
  Chroma 1.5 change the last digit of some such doubles (``0.9655443552261345`` comes back
  as ``0.9655443552261344``; see :mod:`vectorstores.qdrant`), so the exact value travels in
  the JSON object and wins on decoding, while the native copy stays filterable.

Entries that went only into the JSON object cannot be filtered on: a filter naming them
matches no document (a missing field, by :mod:`rag.filters`' semantics). Anything JSON
cannot hold exactly (a ``datetime``, bytes, a mapping with keys that are not strings) is a
:class:`~rag.errors.MetadataError` naming the key, never a silent change.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rag.contract import check_value, key_problem
from rag.errors import MetadataError
from rag.types import Metadata

#: The key the JSON object of non-native entries is stored under.
RESERVED = "_lc_json"
#: Floats with this many significant digits also travel in the JSON object.
EXACT_DIGITS = 15


def encode(metadata: Mapping[str, Any]) -> Metadata:
    """``metadata`` as ragkit metadata (see the module docstring)."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata is a {type(metadata).__name__}, not a mapping")
    native: Metadata = {}
    extra: dict[str, Any] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise MetadataError(f"metadata key {key!r} is a {type(key).__name__}, not a string")
        if key == RESERVED or key_problem(key) is not None or not _native(key, value):
            extra[key] = _plain(key, value)
            continue
        native[key] = value
        if isinstance(value, float) and _digits(value) >= EXACT_DIGITS:
            extra[key] = value
    if extra:
        native[RESERVED] = _dumps(extra)
    return native


def decode(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata :func:`encode` was given, from what a store returns."""
    out = dict(metadata)
    blob = out.pop(RESERVED, None)
    if blob is None:
        return out
    try:
        extra = json.loads(blob) if isinstance(blob, str) else None
    except ValueError:
        extra = None
    if not isinstance(extra, dict):  # not written by encode(): leave it as it was
        out[RESERVED] = blob
        return out
    out.update(extra)
    return out


def _native(key: str, value: Any) -> bool:
    if value is None:
        return False
    try:
        check_value(key, value)
    except MetadataError:
        return False
    return True


def _plain(key: str, value: Any) -> Any:
    """``value`` as JSON holds it: lists for tuples; anything JSON cannot hold raises."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [_plain(key, v) for v in value]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise MetadataError(
                    f"metadata value for {key!r} has the key {k!r}, which is not a string; "
                    "JSON would turn it into one"
                )
            out[k] = _plain(key, v)
        return out
    raise MetadataError(
        f"metadata value for {key!r} is a {type(value).__name__}, which cannot be stored "
        "unchanged; convert it to a string, number, list or mapping first"
    )


def _dumps(extra: dict[str, Any]) -> str:
    text = json.dumps(extra, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: escaped, so that the store accepts the text
        text = json.dumps(extra, ensure_ascii=True, separators=(",", ":"))
    return text


def _digits(value: float) -> int:
    """Significant decimal digits of the shortest repr of ``value``."""
    if not math.isfinite(value) or value == 0:
        return 0
    mantissa = repr(abs(value)).lower().split("e")[0].replace(".", "")
    return len(mantissa.strip("0"))
