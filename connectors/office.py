"""Word documents (.docx) with python-docx, as Markdown-flavoured text.

A DOCX is a ZIP archive of XML parts, and the size limit on files counts compressed
bytes: 24 MB of empty paragraphs compress to 71 KB. :func:`check_zip` refuses, before
anything is parsed, an archive that would expand past :data:`MAX_EXPANDED_BYTES` or hold
more than :data:`MAX_XML_ELEMENTS` elements in its XML parts; any other ZIP-based format
(ODT, EPUB, XLSX, PPTX) is to call it the same way.
"""

from __future__ import annotations

import io
import re
import zipfile
from typing import TYPE_CHECKING

from connectors.parsers import Parsed, normalize_text, short_message
from rag.errors import IngestError

if TYPE_CHECKING:
    from docx.document import Document
    from docx.table import Table
    from docx.text.paragraph import Paragraph

#: Parts an archive may hold.
MAX_ZIP_ENTRIES = 10_000
#: Bytes the parts may expand to, all together (python-docx holds every part in memory).
MAX_EXPANDED_BYTES = 256 * 2**20
#: Elements in the XML parts, all together. python-docx builds a tree of each part and
#: visits every paragraph in Python: a million elements cost a few seconds and a few
#: hundred MB. Word writes some 10-20 elements per paragraph, so a thousand pages of text
#: hold a few hundred thousand.
MAX_XML_ELEMENTS = 1_000_000
_XML_SUFFIXES = (".xml", ".rels")
_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_W_T, _W_HYPHEN = f"{_W}t", f"{_W}noBreakHyphen"
_READ_CHUNK = 2**20

_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def _refused(kind: str, why: str) -> IngestError:
    return IngestError(f"{kind} refused: {why} (a decompression bomb?)")


def _elements(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> int:
    """Elements in one XML part, counted from its tags as it is decompressed (an upper
    bound: a ``<`` that a chunk boundary cuts from its ``/`` counts once too many)."""
    count = 0
    with archive.open(info) as part:
        while chunk := part.read(_READ_CHUNK):
            count += chunk.count(b"<") - chunk.count(b"</") - chunk.count(b"<?")
            count -= chunk.count(b"<!")
    return count


def check_zip(data: bytes, kind: str) -> None:
    """Raise :class:`~rag.errors.IngestError` ("<kind> refused: ...") unless the ZIP archive
    ``data`` holds at most :data:`MAX_ZIP_ENTRIES` parts that expand to at most
    :data:`MAX_EXPANDED_BYTES` with at most :data:`MAX_XML_ELEMENTS` XML elements.

    Sizes are read from the archive's directory; Python's ``zipfile`` never expands a part
    past the size its directory declares, so a part that lies fails its CRC check instead.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise IngestError(f"malformed {kind}: not a ZIP archive") from e
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_ZIP_ENTRIES:
            raise _refused(kind, f"{len(infos):,} parts, more than the {MAX_ZIP_ENTRIES:,} limit")
        expanded = sum(info.file_size for info in infos)
        if expanded > MAX_EXPANDED_BYTES:
            raise _refused(
                kind,
                f"it expands to {expanded / 2**20:,.0f} MB, more than the "
                f"{MAX_EXPANDED_BYTES // 2**20} MB limit",
            )
        elements = 0
        for info in infos:
            if not info.filename.lower().endswith(_XML_SUFFIXES):
                continue
            try:
                elements += _elements(archive, info)
            except Exception as e:  # a bad CRC, zlib.error, an unknown compression method
                raise IngestError(f"malformed {kind}: {short_message(e)}") from e
            if elements > MAX_XML_ELEMENTS:
                raise _refused(kind, f"more than {MAX_XML_ELEMENTS:,} XML elements")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


class _StyleNames:
    """Paragraph style names by style id, read once: python-docx looks a paragraph's style
    up by scanning every style of the document, for each paragraph."""

    def __init__(self, document: Document) -> None:
        from docx.enum.style import WD_STYLE_TYPE

        self.names: dict[str, str] = {}
        self.default = ""
        try:
            styles = document.styles
            default = styles.default(WD_STYLE_TYPE.PARAGRAPH)
            self.default = (default.name or "") if default is not None else ""
            for style in styles:
                if style.type == WD_STYLE_TYPE.PARAGRAPH and style.style_id:
                    self.names.setdefault(style.style_id, style.name or "")
        except (KeyError, ValueError):  # a damaged styles part: no names, no headings
            pass

    def of(self, paragraph: Paragraph) -> str:
        style_id = paragraph._p.style
        return self.names.get(style_id, self.default) if style_id else self.default


def _heading_level(style: str) -> int | None:
    if style.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(style)
    return min(int(match.group(1)), 6) if match and int(match.group(1)) > 0 else None


def _table_lines(table: Table) -> list[str]:
    lines = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            # python-docx repeats a merged cell once per grid column it spans.
            if previous is not None and cell._tc is previous:
                continue
            previous = cell._tc
            cells.append(_collapse(cell.text))
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def parse_docx(data: bytes, stem: str) -> list[Parsed]:
    """Paragraphs and tables in document order; heading and title styles become ``#``
    lines, list styles ``- `` lines, table rows ``cell | cell`` lines."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table

    check_zip(data, "DOCX")
    try:
        document = docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise IngestError("malformed DOCX: not a ZIP archive") from e
    except (PackageNotFoundError, KeyError, ValueError) as e:
        raise IngestError(f"malformed DOCX: {short_message(e)}") from e

    styles = _StyleNames(document)
    lines: list[str] = []
    first_heading: str | None = None
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            lines.append("")
            lines.extend(_table_lines(block))
            lines.append("")
            continue
        # python-docx gathers a paragraph's text with XPath; most of the cost of a file of
        # empty paragraphs. Text is in w:t (or a w:noBreakHyphen): look for one first.
        if next(block._p.iter(_W_T, _W_HYPHEN), None) is None:
            continue
        text = _collapse(block.text)
        if not text:
            continue
        style = styles.of(block)
        level = _heading_level(style)
        if level is not None:
            first_heading = first_heading or text
            lines.extend(["", "#" * level + " " + text, ""])
        elif style.lower().startswith("list"):
            lines.append("- " + text)
        else:
            lines.extend([text, ""])

    title = _collapse(document.core_properties.title or "") or first_heading or stem
    text = re.sub(r"\n{3,}", "\n\n", normalize_text("\n".join(lines)))
    return [Parsed(text, title, "markdown")]
