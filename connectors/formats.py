"""Which parser reads which file suffix, and the one entry point that calls them.

The text formats are parsed in :mod:`connectors.parsers`; HTML, PDF and DOCX in their own
modules, imported only when a file of theirs is read.
"""

from __future__ import annotations

import dataclasses
import re

from connectors.parsers import (
    Parsed,
    Parser,
    clean_text,
    parse_csv,
    parse_markdown,
    parse_rst,
    parse_text,
    short_message,
)
from rag.errors import IngestError, NothingToIndex


def _parse_html(data: bytes, stem: str) -> list[Parsed]:
    from connectors.htmltext import parse_html

    return parse_html(data, stem)


def _parse_pdf(data: bytes, stem: str) -> list[Parsed]:
    from connectors.pdf import parse_pdf

    return parse_pdf(data, stem)


def _parse_docx(data: bytes, stem: str) -> list[Parsed]:
    from connectors.office import parse_docx

    return parse_docx(data, stem)


#: Lower-case suffix -> (name of the format for messages, parser).
PARSERS: dict[str, tuple[str, Parser]] = {
    ".txt": ("text", parse_text),
    ".text": ("text", parse_text),
    ".md": ("Markdown", parse_markdown),
    ".markdown": ("Markdown", parse_markdown),
    ".rst": ("reStructuredText", parse_rst),
    ".html": ("HTML", _parse_html),
    ".htm": ("HTML", _parse_html),
    ".pdf": ("PDF", _parse_pdf),
    ".docx": ("DOCX", _parse_docx),
    ".csv": ("CSV", parse_csv),
}


def parse(suffix: str, data: bytes, stem: str) -> list[Parsed]:
    """Parse ``data`` as the format of ``suffix``; documents without text are dropped.

    Text and titles come out clean whatever the parser: no control characters but tab,
    newline, carriage return and form feed in the text, none at all in a title (a title is
    one line), no lone surrogates (:func:`~connectors.parsers.clean_text`).

    Raises ``IngestError`` for every failure, wrapping unexpected parser exceptions as
    ``could not parse <format>: <message>``, and when no text is left at all.
    """
    kind, parser = PARSERS[suffix.lower()]
    try:
        parsed = [
            dataclasses.replace(p, text=clean_text(p.text), title=_clean_title(p.title))
            for p in parser(data, stem)
        ]
    except IngestError:
        raise
    except Exception as e:  # a bad file must never surface as a raw parser exception
        raise IngestError(f"could not parse {kind}: {short_message(e)}") from e
    kept = [p for p in parsed if p.text.strip()]
    if not kept:
        raise NothingToIndex("no text")
    return kept


_LINE_BREAKS = re.compile(r"[\t\n\r\f]+")


def _clean_title(title: str) -> str:
    return _LINE_BREAKS.sub(" ", clean_text(title)).strip()
