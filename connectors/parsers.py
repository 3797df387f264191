"""Turn the bytes of one file into text, per format.

Every parser takes the raw bytes and the file name stem (the fallback title) and returns
a list of :class:`Parsed` (one per document: PDFs give one per page). Parsers raise
:class:`~rag.errors.IngestError` for what they recognise as a bad file; anything else they
raise is wrapped by :func:`connectors.formats.parse`, so callers only ever see
``IngestError``. This module holds the text formats and what every parser shares; the
other formats have a module each (:mod:`connectors.formats` lists them).

The heavy libraries (pypdf, python-docx, python-pptx, openpyxl, EbookLib, nbformat,
BeautifulSoup, charset-normalizer) are imported on first use, so importing the connector
stays cheap.
"""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

from rag.errors import IngestError
from rag.types import MetadataValue


@dataclass(frozen=True, slots=True)
class Parsed:
    """The text of one document cut from a file, before the connector adds file metadata.

    ``extra`` holds format-specific metadata (``page``, ``page_count``, ``encoding``).
    """

    text: str
    title: str
    format: str = "text"
    extra: dict[str, MetadataValue] = field(default_factory=dict)


Parser = Callable[[bytes, str], list[Parsed]]

# ---------------------------------------------------------------------------------------
# Shared helpers


_TRAILING_SPACE = re.compile(r"[^\S\n]+$", re.MULTILINE)
_MANY_BLANK_LINES = re.compile(r"\n{4,}")
#: C0 and C1 control characters and DEL, except tab, newline, carriage return, form feed.
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` without control characters (ESC, BEL, NUL, DEL, C1; tab, newline, carriage
    return and form feed stay) and with each lone surrogate (which no store can keep)
    replaced by U+FFFD. Every parser's output passes through it, in
    :func:`connectors.formats.parse`."""
    text = _CONTROLS.sub("", text)
    return _SURROGATES.sub("\ufffd", text) if _SURROGATES.search(text) else text


def normalize_text(text: str) -> str:
    """Unix newlines, no trailing spaces, at most two blank lines in a row, no control
    characters but tab, newline and form feed (a vertical tab is a line break)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\v", "\n")
    text = clean_text(text)
    text = _TRAILING_SPACE.sub("", text)
    text = _MANY_BLANK_LINES.sub("\n\n\n", text)
    return text.strip("\n")


def short_message(error: BaseException, limit: int = 120) -> str:
    """The first line of an exception's message, shortened for a one-line report (a
    ``KeyError``'s message without the quotes ``str()`` gives it)."""
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        text = error.args[0]
    else:
        text = str(error)
    lines = text.strip().splitlines()
    message = lines[0].strip() if lines else ""
    if not message:
        return type(error).__name__
    return message if len(message) <= limit else message[: limit - 3].rstrip() + "..."


_BINARY = "binary content, not text"
# Longest first: the UTF-32-LE mark begins with the UTF-16-LE one.
_BOMS: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xef\xbb\xbf", "utf-8"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\xfe\xff", "utf-16-be"),
)
# Share of control characters above which decoded "text" is taken for binary data.
_MAX_CONTROL_SHARE = 0.1
_TEXT_CONTROLS = frozenset("\t\n\r\f\v\x1b")


def _mostly_control(text: str) -> bool:
    sample = text[:100_000]
    if not sample:
        return False
    controls = sum(
        1 for ch in sample if ch not in _TEXT_CONTROLS and (ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0)
    )
    return controls / len(sample) > _MAX_CONTROL_SHARE


def _detect(data: bytes) -> tuple[str, str] | None:
    from charset_normalizer import from_bytes

    results = from_bytes(data)
    best = results.best()
    if best is None:
        return None
    # charset-normalizer often ranks another single-byte code page first on short Western
    # text (e.g. cp1257 for French); when cp1252 explains the bytes about as well, it is by
    # far the likelier legacy encoding.
    for match in results:
        if match.chaos <= best.chaos + 0.1 and "cp1252" in match.could_be_from_charset:
            try:
                return data.decode("cp1252"), "cp1252"
            except UnicodeDecodeError:
                break
    return str(best), best.encoding


#: Share of a UTF-16 text's code units whose high byte is zero, at least (most text of
#: the Latin, Greek and Cyrillic scripts) and at most (the other position) for
#: :func:`_utf16_without_bom`.
_UTF16_ZERO_HIGH = 0.3
_UTF16_ZERO_LOW = 0.02


def _utf16_without_bom(data: bytes) -> tuple[str, str] | None:
    """UTF-16 text without a byte order mark, recognised by its NUL bytes: many in the high
    byte of each code unit, next to none in the low byte; it must then decode, and read as
    text rather than control characters."""
    units = len(data) // 2
    if units < 2 or len(data) % 2:
        return None
    zeros_even, zeros_odd = data[0::2].count(0), data[1::2].count(0)
    if zeros_odd >= units * _UTF16_ZERO_HIGH and zeros_even <= units * _UTF16_ZERO_LOW:
        codec = "utf-16-le"
    elif zeros_even >= units * _UTF16_ZERO_HIGH and zeros_odd <= units * _UTF16_ZERO_LOW:
        codec = "utf-16-be"
    else:
        return None
    try:
        text = data.decode(codec)
    except UnicodeDecodeError:
        return None
    if "\x00" in text or _mostly_control(text):
        return None
    return text, codec


def decode_text(data: bytes) -> tuple[str, str | None]:
    """Decode bytes to text; return the text and the encoding when it was not UTF-8.

    UTF-8 (with or without BOM) first, then UTF-16/32 by BOM, then UTF-16 without one (by
    its pattern of NUL bytes), then whatever charset-normalizer detects. Raises
    ``IngestError`` for binary content.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            try:
                text = data[len(bom) :].decode(codec)
            except UnicodeDecodeError:
                if codec != "utf-8":
                    raise IngestError(_BINARY) from None
                data = data[len(bom) :]
                break
            if "\x00" in text or _mostly_control(text):
                raise IngestError(_BINARY)
            return text, None if codec == "utf-8" else codec
    if b"\x00" in data:
        wide = _utf16_without_bom(data)
        if wide is None:
            raise IngestError(_BINARY)
        return wide
    encoding: str | None = None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        detected = _detect(data)
        if detected is None:
            raise IngestError(_BINARY) from None
        text, encoding = detected
    if "\x00" in text or _mostly_control(text):
        raise IngestError(_BINARY)
    return text, encoding


def _encoding_extra(encoding: str | None) -> dict[str, MetadataValue]:
    return {"encoding": encoding} if encoding else {}


# ---------------------------------------------------------------------------------------
# Plain text and Markdown


def parse_text(data: bytes, stem: str) -> list[Parsed]:
    """Plain text: decoded as is; the title is the file name stem."""
    text, encoding = decode_text(data)
    return [Parsed(normalize_text(text), stem, "text", _encoding_extra(encoding))]


_ATX_H1 = re.compile(r"^ {0,3}#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_SETEXT_H1 = re.compile(r"^ {0,3}=+[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def markdown_title(text: str) -> str | None:
    """The first level-1 heading (``# Title``, or ``Title`` underlined with ``===``).

    Fenced code blocks and a leading YAML front matter block are skipped, so that a
    ``# comment`` in them is not taken for the title.
    """
    lines = text.split("\n")
    start = 0
    if lines and lines[0].strip() == "---":
        for i in range(1, len(lines)):
            if lines[i].strip() in ("---", "..."):
                start = i + 1
                break
    fence: str | None = None
    for i in range(start, len(lines)):
        line = lines[i]
        opening = _FENCE.match(line)
        if fence is not None:
            if opening and opening.group(1) == fence:
                fence = None
            continue
        if opening:
            fence = opening.group(1)
            continue
        match = _ATX_H1.match(line)
        if match and match.group(1).strip("# \t"):
            return match.group(1).strip()
        if (
            line.strip()
            and i + 1 < len(lines)
            and _SETEXT_H1.match(lines[i + 1])
            and (i == start or not lines[i - 1].strip())
        ):
            return line.strip()
    return None


def parse_markdown(data: bytes, stem: str) -> list[Parsed]:
    """Markdown: the text as is, titled by its first level-1 heading."""
    text, encoding = decode_text(data)
    text = normalize_text(text)
    return [Parsed(text, markdown_title(text) or stem, "markdown", _encoding_extra(encoding))]


# ---------------------------------------------------------------------------------------
# reStructuredText


_ADORNMENT_CHARS = frozenset(string.punctuation)


def _adornment(line: str) -> str | None:
    """The character of a section adornment line (``=====``), or None."""
    s = line.rstrip()
    if len(s) < 2 or s in ("::", "..") or s[0] not in _ADORNMENT_CHARS:
        return None
    return s[0] if s.count(s[0]) == len(s) else None


def _width(text: str) -> int:
    # Section underlines are measured in columns; wide East Asian characters take two.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def rst_to_markdown(text: str) -> tuple[str, str | None]:
    """Rewrite reStructuredText section titles as Markdown headings.

    Levels follow the order in which each adornment style (character, with or without
    overline) first appears, as docutils assigns them. Returns the text and the first
    section title.
    """
    lines = text.split("\n")
    out: list[str] = []
    levels: dict[tuple[str, bool], int] = {}
    first_title: str | None = None
    after_break = True  # at the start, after a blank line, or after a title
    i = 0

    def heading(title: str, style: tuple[str, bool]) -> None:
        nonlocal first_title
        level = levels.setdefault(style, len(levels) + 1)
        if out and out[-1]:
            out.append("")
        out.extend(["#" * min(level, 6) + " " + title, ""])
        first_title = first_title or title

    while i < len(lines):
        line = lines[i]
        char = _adornment(line)
        if char and after_break and i + 2 < len(lines):
            title, under = lines[i + 1].strip(), lines[i + 2]
            if (
                title
                and _adornment(lines[i + 1]) is None
                and under.rstrip() == line.rstrip()
                and _width(title) <= len(line.rstrip())
            ):
                heading(title, (char, True))
                i += 3
                continue
        if (
            not char
            and after_break
            and line.strip()
            and not line[0].isspace()
            and i + 1 < len(lines)
        ):
            under_char = _adornment(lines[i + 1])
            if under_char and _width(line.strip()) <= len(lines[i + 1].rstrip()):
                heading(line.strip(), (under_char, False))
                i += 2
                continue
        out.append(line)
        after_break = not line.strip()
        i += 1
    return "\n".join(out), first_title


def parse_rst(data: bytes, stem: str) -> list[Parsed]:
    """reStructuredText, with section titles rewritten as Markdown headings."""
    text, encoding = decode_text(data)
    converted, title = rst_to_markdown(normalize_text(text))
    converted = re.sub(r"\n{3,}", "\n\n", normalize_text(converted))
    return [Parsed(converted, title or stem, "markdown", _encoding_extra(encoding))]


# ---------------------------------------------------------------------------------------
# CSV


_SPACES = re.compile(r"\s+")


def parse_csv(data: bytes, stem: str) -> list[Parsed]:
    """CSV: one line per data row, ``header: value; header: value`` (empty cells left out)."""
    text, encoding = decode_text(data)
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
            text[:65536], delimiters=",;\t|"
        )
    except csv.Error:
        dialect = csv.excel
    header: list[str] | None = None
    rows: list[str] = []
    for row in csv.reader(io.StringIO(text), dialect):
        cells = [_SPACES.sub(" ", cell).strip() for cell in row]
        if not any(cells):
            continue
        if header is None:
            header = [cell or f"column {n}" for n, cell in enumerate(cells, 1)]
            continue
        pairs = [
            f"{header[n] if n < len(header) else f'column {n + 1}'}: {value}"
            for n, value in enumerate(cells)
            if value
        ]
        rows.append("; ".join(pairs))
    if not rows:
        raise IngestError("no rows")
    return [Parsed("\n".join(rows), stem, "text", _encoding_extra(encoding))]
