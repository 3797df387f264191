"""Jupyter notebooks (.ipynb) with nbformat, as one Markdown document.

Markdown cells are kept as they are; each code cell becomes a fenced block tagged with the
notebook's language (``python`` unless its kernel says otherwise), so that the chunker
and a reader both see code as code. Raw cells (material for nbconvert) are left out.

Outputs are left out by default: they are mostly numbers, tracebacks and data dumps that
repeat what the code says, and a notebook's outputs change each time it is run. With the
``notebook_outputs`` source option set, the text of each code cell's outputs follows the
cell as a fenced ``output`` block (streams, ``text/plain`` results, error names and
messages; images and HTML are left out).

Notebooks of every nbformat version are read (older ones converted to version 4); a file
that is not JSON, or not a notebook by nbformat's schema, is reported as malformed.

The title is the first level-1 heading of the Markdown cells, else the notebook's
``title`` metadata, else the file name. Metadata: ``language`` (the notebook's language),
``cells`` (the code and Markdown cells read).
"""

from __future__ import annotations

import re
from typing import Any

from connectors.parsers import Parsed, decode_text, markdown_title, normalize_text, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

_BACKTICKS = re.compile(r"`{3,}")
#: Characters a fence's language tag keeps (``c++`` and ``objective-c`` stay whole).
_LANGUAGE = re.compile(r"[^\w+#.-]")


def _fence(body: str, language: str) -> str:
    """``body`` in a fenced block whose fence is longer than any backtick run inside it."""
    longest = max((len(m.group()) for m in _BACKTICKS.finditer(body)), default=2)
    fence = "`" * (longest + 1)
    return f"{fence}{language}\n{body.rstrip()}\n{fence}"


def _source(cell: Any) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _language(notebook: Any) -> str:
    metadata = notebook.get("metadata") or {}
    for holder, key in (("kernelspec", "language"), ("language_info", "name")):
        value = (metadata.get(holder) or {}).get(key)
        if isinstance(value, str) and value.strip():
            return _LANGUAGE.sub("", value.strip().lower())
    return "python"


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def _outputs(cell: Any) -> str:
    """The text of a code cell's outputs: streams, plain-text results, errors."""
    parts: list[str] = []
    for output in cell.get("outputs") or []:
        kind = output.get("output_type")
        if kind == "stream":
            parts.append(_text(output.get("text", "")))
        elif kind in ("execute_result", "display_data"):
            data = output.get("data") or {}
            if "text/plain" in data:
                parts.append(_text(data["text/plain"]))
        elif kind == "error":
            parts.append(f"{output.get('ename', 'Error')}: {output.get('evalue', '')}")
    return "\n".join(p.rstrip("\n") for p in parts if p.strip())


def _read(data: bytes) -> Any:
    import nbformat
    from nbformat.reader import NotJSONError

    text, _ = decode_text(data)
    try:
        return nbformat.reads(text, as_version=4)
    except (NotJSONError, nbformat.ValidationError) as e:
        raise IngestError(f"malformed notebook: {short_message(e)}") from e
    except Exception as e:  # JSON of another shape: nbformat indexes into it unchecked
        raise IngestError(f"malformed notebook: not a notebook ({short_message(e)})") from e


def parse_notebook(data: bytes, stem: str, *, outputs: bool = False) -> list[Parsed]:
    """Markdown cells as they are, code cells fenced; outputs only with ``outputs``."""
    notebook = _read(data)
    language = _language(notebook)
    blocks: list[str] = []
    markdown: list[str] = []
    cells = 0
    for cell in notebook.get("cells") or []:
        kind = cell.get("cell_type")
        source = _source(cell)
        if kind == "markdown" and source.strip():
            blocks.append(source.strip("\n"))
            markdown.append(source)
        elif kind == "code" and source.strip():
            blocks.append(_fence(source, language))
            if outputs and (shown := _outputs(cell)):
                blocks.append(_fence(shown, "output"))
        else:
            continue
        cells += 1
    meta_title = (notebook.get("metadata") or {}).get("title")
    title = (
        markdown_title(normalize_text("\n\n".join(markdown)))
        or (meta_title.strip() if isinstance(meta_title, str) else "")
        or stem
    )
    extra: dict[str, MetadataValue] = {"language": language, "cells": cells}
    return [Parsed(normalize_text("\n\n".join(blocks)), title, "markdown", extra)]
