"""Which parser reads which file suffix, and the one entry point that calls them.

The text formats are parsed in :mod:`connectors.parsers`; the others in a module each,
imported only when a file of theirs is read: HTML (:mod:`connectors.htmltext`), PDF
(:mod:`connectors.pdf`), DOCX (:mod:`connectors.office`), PPTX (:mod:`connectors.slides`),
XLSX (:mod:`connectors.sheets`), EPUB (:mod:`connectors.ebook`), Jupyter notebooks
(:mod:`connectors.notebook`), JSON and JSON Lines (:mod:`connectors.records`) and e-mail
(:mod:`connectors.mail`).

A few formats take the user's choices, gathered in :class:`FormatOptions`. A source that
reads files offers them by merging :data:`FORMAT_OPTIONS` into its ``options`` (see
:mod:`rag.source`), turning its params into a ``FormatOptions`` with
:func:`format_options`, and passing that to :func:`parse`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

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
from rag.errors import ConfigError, IngestError, NothingToIndex
from rag.source import SourceOptions


@dataclass(frozen=True, slots=True)
class FormatOptions:
    """The user's choices for the formats that have some; the defaults suit most files."""

    #: The field of a JSON / JSON Lines record that holds its text (``None``: the first of
    #: ``text``, ``content``, ``body``, else the whole record; see :mod:`connectors.records`).
    json_field: str | None = None
    #: Whether a notebook's code cells are followed by the text of their outputs.
    notebook_outputs: bool = False


DEFAULT_OPTIONS = FormatOptions()

#: The source options that set :class:`FormatOptions`: name -> one line of help.
FORMAT_OPTIONS: dict[str, str] = {
    "json_field": "the field of each JSON/JSONL record that holds its text (default: the "
    "first of text, content, body; else the whole record as key: value lines)",
    "notebook_outputs": "yes to index the text outputs of notebook code cells (default no)",
}

_YES = frozenset({"1", "yes", "true", "on"})
_NO = frozenset({"0", "no", "false", "off", ""})


def format_options(options: SourceOptions) -> FormatOptions:
    """The :class:`FormatOptions` given as source params (``--json-field body``); a value
    that cannot be read is a :class:`~rag.errors.ConfigError`."""
    field = options.param("json_field")
    if field is not None and not field.strip():
        raise ConfigError("json_field names a field; it cannot be empty")
    outputs = (options.param("notebook_outputs") or "").strip().lower()
    if outputs not in _YES | _NO:
        raise ConfigError(f"notebook_outputs takes yes or no, not {outputs!r}")
    return FormatOptions(
        json_field=field.strip() if field is not None else None,
        notebook_outputs=outputs in _YES,
    )


def _parse_html(data: bytes, stem: str) -> list[Parsed]:
    from connectors.htmltext import parse_html

    return parse_html(data, stem)


def _parse_pdf(data: bytes, stem: str) -> list[Parsed]:
    from connectors.pdf import parse_pdf

    return parse_pdf(data, stem)


def _parse_docx(data: bytes, stem: str) -> list[Parsed]:
    from connectors.office import parse_docx

    return parse_docx(data, stem)


def _parse_pptx(data: bytes, stem: str) -> list[Parsed]:
    from connectors.slides import parse_pptx

    return parse_pptx(data, stem)


def _parse_xlsx(data: bytes, stem: str) -> list[Parsed]:
    from connectors.sheets import parse_xlsx

    return parse_xlsx(data, stem)


def _parse_epub(data: bytes, stem: str) -> list[Parsed]:
    from connectors.ebook import parse_epub

    return parse_epub(data, stem)


def _parse_eml(data: bytes, stem: str) -> list[Parsed]:
    from connectors.mail import parse_eml

    return parse_eml(data, stem)


def _parse_notebook(data: bytes, stem: str, options: FormatOptions) -> list[Parsed]:
    from connectors.notebook import parse_notebook

    return parse_notebook(data, stem, outputs=options.notebook_outputs)


def _parse_json(data: bytes, stem: str, options: FormatOptions) -> list[Parsed]:
    from connectors.records import parse_json

    return parse_json(data, stem, field=options.json_field)


def _parse_jsonl(data: bytes, stem: str, options: FormatOptions) -> list[Parsed]:
    from connectors.records import parse_jsonl

    return parse_jsonl(data, stem, field=options.json_field)


_OptionParser = Callable[[bytes, str, FormatOptions], list[Parsed]]

#: The parsers that take :class:`FormatOptions`, by suffix.
_WITH_OPTIONS: dict[str, _OptionParser] = {
    ".ipynb": _parse_notebook,
    ".json": _parse_json,
    ".jsonl": _parse_jsonl,
}


def _with_defaults(parser: _OptionParser) -> Parser:
    def parse_with_defaults(data: bytes, stem: str) -> list[Parsed]:
        return parser(data, stem, DEFAULT_OPTIONS)

    return parse_with_defaults


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
    ".pptx": ("PPTX", _parse_pptx),
    ".xlsx": ("XLSX", _parse_xlsx),
    ".epub": ("EPUB", _parse_epub),
    ".ipynb": ("notebook", _with_defaults(_parse_notebook)),
    ".json": ("JSON", _with_defaults(_parse_json)),
    ".jsonl": ("JSONL", _with_defaults(_parse_jsonl)),
    ".eml": ("EML", _parse_eml),
}


def parse(
    suffix: str, data: bytes, stem: str, *, options: FormatOptions = DEFAULT_OPTIONS
) -> list[Parsed]:
    """Parse ``data`` as the format of ``suffix``; documents without text are dropped.
    ``options`` reach the parsers that take them (JSON, JSON Lines, notebooks).

    Text and titles come out clean whatever the parser: no control characters but tab,
    newline, carriage return and form feed in the text, none at all in a title or a string
    of metadata (each is one line), no lone surrogates
    (:func:`~connectors.parsers.clean_text`).

    Raises ``IngestError`` for every failure, wrapping unexpected parser exceptions as
    ``could not parse <format>: <message>``, and when no text is left at all.
    """
    suffix = suffix.lower()
    kind, parser = PARSERS[suffix]
    configured = _WITH_OPTIONS.get(suffix) if options != DEFAULT_OPTIONS else None
    try:
        produced = configured(data, stem, options) if configured else parser(data, stem)
        parsed = [
            dataclasses.replace(
                p,
                text=clean_text(p.text),
                title=_clean_title(p.title),
                extra={k: _clean_title(v) if isinstance(v, str) else v for k, v in p.extra.items()},
            )
            for p in produced
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
