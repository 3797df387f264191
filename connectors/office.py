"""Word documents (.docx) with python-docx, as Markdown-flavoured text."""

from __future__ import annotations

import io
import re
import zipfile
from typing import TYPE_CHECKING

from connectors.parsers import Parsed, normalize_text, short_message
from rag.errors import IngestError

if TYPE_CHECKING:
    from docx.table import Table
    from docx.text.paragraph import Paragraph

_HEADING_STYLE = re.compile(r"^heading (\d)$", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _style_name(paragraph: Paragraph) -> str:
    try:
        style = paragraph.style
    except (KeyError, ValueError):  # a style id the styles part does not define
        return ""
    return (style.name or "") if style is not None else ""


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

    try:
        document = docx.Document(io.BytesIO(data))
    except zipfile.BadZipFile as e:
        raise IngestError("malformed DOCX: not a ZIP archive") from e
    except (PackageNotFoundError, KeyError, ValueError) as e:
        raise IngestError(f"malformed DOCX: {short_message(e)}") from e

    lines: list[str] = []
    first_heading: str | None = None
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            lines.append("")
            lines.extend(_table_lines(block))
            lines.append("")
            continue
        text = _collapse(block.text)
        if not text:
            continue
        style = _style_name(block)
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
