"""Excel workbooks (.xlsx) with openpyxl: each sheet cut into documents of bounded size.

Each worksheet is read as a table, as CSV files are: its first non-empty row is the
header, and every later row becomes one line ``header: value; header: value`` (empty
cells left out; a column without a header is named by its letter, ``column C``), so that a
chunk of rows still says what each value is. Empty rows are skipped. Rows are grouped into
documents of at most :data:`MAX_ROWS` rows and :data:`MAX_CHARS` characters, so that a
sheet of 100,000 rows gives many documents a search can tell apart instead of one.

Metadata: ``sheet`` (its name), ``first_row`` and ``last_row`` (the row numbers Excel
shows, the first and last row the document holds). Hidden sheets are read like the others
(they are still the author's data); chart sheets hold no cells and give nothing.

Cells give their stored values: for a formula, the value Excel last computed (a file
written by a program that never computed it gives nothing for that cell). Dates are
written ISO 8601 (``2024-01-31``, with the time when it is not midnight).

The archive passes :func:`connectors.office.check_zip` before openpyxl opens it, and the
workbook is read in openpyxl's read-only (streaming) mode, one row at a time.
"""

from __future__ import annotations

import datetime
import io
import re
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

from connectors.office import check_zip
from connectors.parsers import Parsed, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

#: Rows per document, at most.
MAX_ROWS = 100
#: Characters per document, at most (a single longer row is a document of its own).
MAX_CHARS = 4000

_SPACES = re.compile(r"\s+")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, datetime.datetime):
        if value.time() == datetime.time(0):
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _SPACES.sub(" ", str(value)).strip()


def _rows(sheet: Any) -> Iterator[tuple[int, list[str]]]:
    """``(row number, cell texts)`` for each row that is not empty."""
    # Read-only mode trusts the size a sheet declares, which other programs get wrong;
    # forgetting it makes openpyxl read every row there is.
    sheet.reset_dimensions()
    for number, values in enumerate(sheet.iter_rows(values_only=True), 1):
        cells = [_cell(v) for v in values]
        if any(cells):
            yield number, cells


def _line(header: Sequence[str], cells: Sequence[str]) -> str:
    from openpyxl.utils import get_column_letter

    return "; ".join(
        f"{header[n] if n < len(header) and header[n] else f'column {get_column_letter(n + 1)}'}"
        f": {value}"
        for n, value in enumerate(cells)
        if value
    )


def _sheet_documents(sheet: Any, title: str) -> Iterator[Parsed]:
    header: list[str] | None = None
    header_row = 0
    lines: list[str] = []
    size = 0
    first = last = 0

    def document() -> Parsed:
        extra: dict[str, MetadataValue] = {
            "sheet": sheet.title,
            "first_row": first,
            "last_row": last,
        }
        return Parsed("\n".join(lines), title, "text", extra)

    for number, cells in _rows(sheet):
        if header is None:
            header, header_row = cells, number
            continue
        line = _line(header, cells)
        if lines and (len(lines) >= MAX_ROWS or size + len(line) + 1 > MAX_CHARS):
            yield document()
            lines, size = [], 0
        if not lines:
            first = number
        lines.append(line)
        size += len(line) + 1
        last = number
    if lines:
        yield document()
    elif header is not None:
        # A sheet of one row (a list, or a header alone) is still text worth finding.
        first = last = header_row
        lines = ["; ".join(cell for cell in header if cell)]
        yield document()


def parse_xlsx(data: bytes, stem: str) -> list[Parsed]:
    """Every sheet's rows, grouped into documents; see the module docstring."""
    import openpyxl
    from openpyxl.utils.exceptions import InvalidFileException

    check_zip(data, "XLSX")
    try:
        workbook = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except zipfile.BadZipFile as e:
        raise IngestError("malformed XLSX: not a ZIP archive") from e
    except (InvalidFileException, KeyError, ValueError, TypeError, AttributeError) as e:
        raise IngestError(f"malformed XLSX: {short_message(e)}") from e
    try:
        title = _SPACES.sub(" ", workbook.properties.title or "").strip() or stem
        parsed: list[Parsed] = []
        for sheet in workbook.worksheets:
            parsed.extend(_sheet_documents(sheet, title))
    finally:
        workbook.close()
    return parsed
