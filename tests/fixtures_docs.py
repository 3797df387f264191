"""Builders for document fixtures (PDF, DOCX), generated at test time: no binary fixtures
live in the repository."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path


def pdf_bytes(pages: Sequence[Sequence[str]], *, title: str | None = None) -> bytes:
    """A PDF with one page per item of ``pages``, each the given lines of text (an empty
    sequence makes a blank page). Without ``title`` reportlab writes "untitled"."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    buffer = io.BytesIO()
    pdf = canvas.Canvas(buffer, pagesize=A4, invariant=True)
    if title is not None:
        pdf.setTitle(title)
    for lines in pages:
        y = 780
        for line in lines:
            pdf.drawString(72, y, line)
            y -= 18
        pdf.showPage()
    pdf.save()
    return buffer.getvalue()


def write_pdf(path: Path, pages: Sequence[Sequence[str]], *, title: str | None = None) -> bytes:
    data = pdf_bytes(pages, title=title)
    path.write_bytes(data)
    return data


def encrypted_pdf_bytes(source: bytes, *, user_password: str, owner_password: str) -> bytes:
    """``source`` re-written with RC4 encryption (which pypdf reads without extra packages)."""
    from pypdf import PdfReader, PdfWriter

    reader = PdfReader(io.BytesIO(source))
    writer = PdfWriter()
    writer.append(reader)
    if reader.metadata:
        writer.add_metadata(dict(reader.metadata))
    writer.encrypt(user_password, owner_password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def write_docx(path: Path, *, core_title: str = "", with_heading: bool = True) -> bytes:
    """A Word document: a Title paragraph, headings, body text, a bullet list and a table."""
    import docx

    document = docx.Document()
    document.core_properties.title = core_title
    if with_heading:
        document.add_heading("Project Plan", level=0)  # style "Title"
        document.add_heading("Goals", level=1)
    document.add_paragraph("Ship the connector   before Friday.")
    document.add_paragraph("Parse PDFs", style="List Bullet")
    document.add_paragraph("Parse DOCX", style="List Bullet")
    if with_heading:
        document.add_heading("Budget", level=2)
    table = document.add_table(rows=4, cols=2)
    for r, row in enumerate([("Item", "Cost"), ("Laptop", "1200"), ("", ""), ("", "")]):
        for c, value in enumerate(row):
            table.cell(r, c).text = value
    table.cell(3, 0).merge(table.cell(3, 1)).text = "Total: 1200"  # one cell over two columns
    document.add_paragraph("Closing remark.")
    document.save(str(path))
    return path.read_bytes()
