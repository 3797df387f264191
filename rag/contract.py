"""The checks every store and source input passes, written once.

Stores call them through :class:`rag.store.StoreBase`, connectors through
:func:`check_metadata`; each raises a class of the error tree that is also a ``ValueError``
(:class:`~rag.errors.ContractError`, :class:`~rag.errors.MetadataError`,
:class:`~rag.errors.DimensionMismatchError`).

The metadata rule, the same on every store:

* keys are 1-64 characters: a letter or ``_`` first, then letters, digits, ``_``, ``-`` or
  spaces (so ``"Header 1"``, as LangChain's Markdown splitter writes it, is a key), not
  ending in a space; the filter language names fields the same way;
* values are ``str``, ``bool``, ``int`` in the signed 64-bit range, or finite ``float``;
  strings are valid Unicode without NUL characters;
* ``None`` means "no value": the key is left out, on every store alike;
* lists, nested objects and anything else are refused, naming the key.

Collection names, the same on every store and in ``Settings.collection``: 1-63 letters,
digits, ``_`` or ``-``, starting with a letter or digit (:func:`check_collection_name`).
A store turns the name into a folder, a table or an engine's collection name, so a name
that could step out of its folder (``../x``) never reaches one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from rag.errors import ConfigError, ContractError, DimensionMismatchError, MetadataError
from rag.types import Chunk, Metadata

if TYPE_CHECKING:  # numpy is imported where vectors are checked: settings need none of it
    import numpy as np

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_KEY_CHARS = 64
#: Letters (any script), digits and "_" via \w; then "-" and spaces inside.
_KEY = re.compile(r"[^\W\d][\w\- ]{0,63}")  # fullmatch: "$" would let a final "\n" in
MAX_COLLECTION_CHARS = 63
_COLLECTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
#: How far a stored vector's length may stray from 1 before it is rescaled.
_UNIT_TOLERANCE = 1e-4


def key_problem(key: object) -> str | None:
    """Why ``key`` cannot name a metadata field, or ``None`` when it can."""
    if not isinstance(key, str):
        return f"metadata key {key!r} is a {type(key).__name__}, not a string"
    if not _KEY.fullmatch(key) or key.endswith(" "):
        return (
            f"metadata key {key!r} must be 1-{MAX_KEY_CHARS} characters: a letter or '_' "
            "first, then letters, digits, '_', '-' or spaces (not at the end)"
        )
    return None


def check_key(key: object) -> str:
    problem = key_problem(key)
    if problem:
        raise MetadataError(problem)
    return key  # type: ignore[return-value]


def collection_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a collection, or ``None`` when it can."""
    if not isinstance(name, str):
        return f"a collection name is a string, not {type(name).__name__}"
    if not _COLLECTION.fullmatch(name):
        return (
            f"collection name {name!r} must be 1-{MAX_COLLECTION_CHARS} letters, digits, '_' "
            "or '-', starting with a letter or digit"
        )
    return None


def check_collection_name(name: object) -> str:
    """``name`` if it can name a collection on every store; else :class:`ConfigError` (a
    name is a setting, as ``Settings.collection`` is)."""
    problem = collection_name_problem(name)
    if problem:
        raise ConfigError(problem)
    return name  # type: ignore[return-value]


def check_text(text: object, *, what: str) -> str:
    """A string that every store can keep: valid Unicode, no NUL."""
    if not isinstance(text, str):
        raise ContractError(f"{what} is a {type(text).__name__}, not a string")
    if "\x00" in text:
        raise ContractError(f"{what} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ContractError(f"{what} is not valid Unicode (a lone surrogate at {e.start})") from e
    return text


def check_value(key: str, value: object) -> None:
    """Raise :class:`MetadataError` unless ``value`` is a storable scalar (not ``None``)."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise MetadataError(
                f"metadata value for {key!r} ({value}) is outside the signed 64-bit range "
                "every store keeps exactly; store it as a string"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise MetadataError(f"metadata value for {key!r} is {value}; only finite numbers")
        return
    if isinstance(value, str):
        try:
            check_text(value, what=f"metadata value for {key!r}")
        except ContractError as e:
            raise MetadataError(str(e)) from None
        return
    raise MetadataError(
        f"metadata value for {key!r} is a {type(value).__name__}; only str, int, float and "
        "bool are stored (lists and nested objects are not: join or flatten them)"
    )


def check_metadata(metadata: Mapping[str, Any]) -> Metadata:
    """``metadata`` as a plain dict that follows the rule (``None`` values left out), or
    :class:`MetadataError` naming the first bad entry."""
    if not isinstance(metadata, Mapping):
        raise MetadataError(f"metadata is a {type(metadata).__name__}, not a mapping")
    out: Metadata = {}
    for key, value in metadata.items():
        check_key(key)
        if value is None:
            continue
        check_value(key, value)
        out[key] = value  # type: ignore[assignment]
    return out


def check_chunks(chunks: Sequence[Chunk]) -> list[Chunk]:
    """The chunks of one write, checked: ids non-empty and unique, text and metadata by the
    rule. Chunks whose metadata held ``None`` values come back without them."""
    seen: set[str] = set()
    out: list[Chunk] = []
    for chunk in chunks:
        if not isinstance(chunk, Chunk):
            raise ContractError(f"expected a Chunk, got {type(chunk).__name__}")
        check_text(chunk.id, what="a chunk id")
        if not chunk.id:
            raise ContractError("a chunk id is empty")
        if chunk.id in seen:
            raise ContractError(f"chunk id {chunk.id!r} appears twice in one upsert")
        seen.add(chunk.id)
        check_text(chunk.text, what=f"the text of chunk {chunk.id!r}")
        try:
            meta = check_metadata(chunk.metadata)
        except MetadataError as e:
            raise MetadataError(f"chunk {chunk.id!r}: {e}") from None
        out.append(chunk if len(meta) == len(chunk.metadata) else Chunk(chunk.id, chunk.text, meta))
    return out


def check_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):
        raise ContractError("ids is a sequence of strings, not one string")
    out = list(ids)
    for i in out:
        if not isinstance(i, str):
            raise ContractError(f"a chunk id is a {type(i).__name__}, not a string")
    return out


def check_vectors(
    vectors: Any, dim: int, *, rows: int | None, store: str, collection: str
) -> np.ndarray:
    """``vectors`` as a C-contiguous float32 ``(rows, dim)`` array of unit rows.

    Rows are rescaled to unit length where they stray from it (every store ranks by cosine
    similarity); a zero, NaN or infinite row is refused.
    """
    import numpy as np

    try:
        arr = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ContractError(f"vectors are not a numeric array: {e}") from e
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2 or arr.shape[1] != dim:
        got = arr.shape[-1] if arr.ndim else 0
        raise DimensionMismatchError(
            f"{store} collection {collection!r} holds {dim}-dimensional vectors, got {got}; "
            "re-ingest into a new collection or use the embedder that built this one"
        )
    if rows is not None and arr.shape[0] != rows:
        raise ContractError(f"{rows} chunks but {arr.shape[0]} vectors")
    if arr.size and not np.isfinite(arr).all():
        raise ContractError("vectors contain NaN or infinity")
    norms = np.linalg.norm(arr, axis=1) if arr.size else np.ones(0, dtype=np.float32)
    if (norms == 0).any():
        raise ContractError("a vector is all zeros; it has no direction to rank by")
    off = np.abs(norms - 1.0) > _UNIT_TOLERANCE
    if off.any():
        arr = arr.copy()
        arr[off] /= norms[off, None]
    return np.ascontiguousarray(arr)


def check_query(vector: Any, dim: int, *, store: str, collection: str) -> np.ndarray:
    """One query vector as a float32 unit vector of shape ``(dim,)``."""
    return check_vectors(vector, dim, rows=1, store=store, collection=collection)[0]


def check_k(k: object, *, name: str = "k", limit: int | None = None) -> int:
    """A positive integer (at most ``limit`` when given)."""
    import numpy as np

    if not isinstance(k, int | np.integer) or isinstance(k, bool) or k < 1:
        raise ContractError(f"{name} must be a positive integer, got {k!r}")
    if limit is not None and k > limit:
        raise ContractError(f"{name} must be at most {limit}, got {k}")
    return int(k)
