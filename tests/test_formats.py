"""The formats beyond text, PDF and DOCX: PPTX, XLSX, EPUB, Jupyter notebooks, JSON, JSON
Lines and e-mail. Each is read by the filesystem connector's :func:`load` into documents
with its own metadata, a broken file of each is reported with its reason without stopping
an ingest, and the format options reach their parsers from ``Collection.ingest`` and from
``rag ingest``.

Every fixture is generated at test time with the library that reads the format (or the
standard library); nothing binary is committed.
"""

from __future__ import annotations

import datetime
import io
import itertools
import json
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from connectors import SUPPORTED_SUFFIXES, FileRef, FilesystemSource, load
from connectors.formats import FormatOptions, format_options, parse
from rag.config import Settings
from rag.errors import ConfigError, IngestError, NothingToIndex
from rag.source import SourceOptions, open_source
from rag.types import Document
from tests.fixtures_docs import write_docx

NEW_SUFFIXES = {".pptx", ".xlsx", ".epub", ".ipynb", ".json", ".jsonl", ".eml"}


def ref(path: Path) -> FileRef:
    st = path.stat()
    return FileRef(path.resolve(), st.st_size, st.st_mtime)


def load_error(path: Path) -> str:
    with pytest.raises(IngestError) as info:
        load(ref(path))
    return str(info.value)


def extra(doc: Document, *keys: str) -> dict[str, Any]:
    return {k: doc.metadata[k] for k in keys if k in doc.metadata}


# ---------------------------------------------------------------------------------------
# Builders


def pptx_bytes(*, core_title: str = "") -> bytes:
    """Three slides: a title with bullets and notes, an empty one, a table."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    deck.core_properties.title = core_title
    first = deck.slides.add_slide(deck.slide_layouts[1])
    first.shapes.title.text = "Quarterly results"
    body = first.placeholders[1].text_frame
    body.text = "Revenue grew by 12 percent"
    sub = body.add_paragraph()
    sub.text = "mostly in the north"
    sub.level = 1
    first.notes_slide.notes_text_frame.text = "Mention the new warehouse."
    deck.slides.add_slide(deck.slide_layouts[6])  # blank: no text at all
    third = deck.slides.add_slide(deck.slide_layouts[5])
    third.shapes.title.text = "Regions"
    table = third.shapes.add_table(2, 2, Inches(1), Inches(2), Inches(4), Inches(1)).table
    for (r, c), text in {(0, 0): "region", (0, 1): "sales", (1, 0): "north", (1, 1): "42"}.items():
        table.cell(r, c).text = text
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def xlsx_bytes(rows: int = 250) -> bytes:
    """Sheet "Orders": a header on row 2, then ``rows`` data rows with an empty row 10;
    sheet "Empty" with nothing; sheet "Notes" with one row."""
    import openpyxl

    book = openpyxl.Workbook()
    orders = book.active
    orders.title = "Orders"
    orders.append([])
    orders.append(["order", "customer", None, "placed"])
    number = 3
    for n in range(1, rows + 1):
        if number == 10:
            orders.append([])
            number += 1
        orders.append([n, f"customer {n}", 2.0 * n, datetime.datetime(2024, 1, 31)])
        number += 1
    book.create_sheet("Empty")
    book.create_sheet("Notes").append(["checked by Ann"])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def epub_bytes(*, encrypted: bool = False) -> bytes:
    """A book of three chapters in reading order after its navigation page: one titled
    by the table of contents, one by its heading only, one without text."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("urn:test:1")
    book.set_title("The Lighthouse")
    book.set_language("en")
    book.add_author("A. Keeper")
    one = epub.EpubHtml(title="One", file_name="text/one.xhtml", lang="en")
    one.content = "<h1>Arrival</h1><p>The keeper climbed 217 steps.</p>"
    two = epub.EpubHtml(title="Two", file_name="text/two.xhtml", lang="en")
    two.content = "<h2>The storm</h2><p>Waves broke over the rocks.</p>"
    blank = epub.EpubHtml(title="Blank", file_name="text/blank.xhtml", lang="en")
    blank.content = "<p> </p>"
    for chapter in (one, two, blank):
        book.add_item(chapter)
    book.toc = (epub.Link("text/one.xhtml", "Chapter 1: Arrival", "one"),)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", one, two, blank]
    buffer = io.BytesIO()
    epub.write_epub(buffer, book)
    data = buffer.getvalue()
    if encrypted:
        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                dst.writestr(info, src.read(info))
            dst.writestr(
                "META-INF/encryption.xml",
                '<encryption xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
                '<EncryptedData><CipherData><CipherReference URI="EPUB/text/one.xhtml"/>'
                "</CipherData></EncryptedData></encryption>",
            )
        data = out.getvalue()
    return data


def notebook_bytes(cells: Sequence[Any] | None = None) -> bytes:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output, new_raw_cell

    if cells is None:
        cells = [
            new_markdown_cell("# Sales analysis\n\nWe load the **orders**."),
            new_code_cell(
                "total = sum(orders)\nprint(total)",
                outputs=[new_output("stream", name="stdout", text="4217\n")],
            ),
            new_code_cell(
                'doc = """\n```\nnot a fence end\n```\n"""',
                outputs=[new_output("execute_result", data={"text/plain": "'...'"})],
            ),
            new_raw_cell("raw material for nbconvert"),
            new_code_cell("   "),
        ]
    notebook = new_notebook(
        cells=list(cells),
        metadata={"kernelspec": {"name": "ir", "language": "R", "display_name": "R"}},
    )
    return nbformat.writes(notebook).encode("utf-8")


def eml_bytes(*, html_only: bool = False, subject: str = "Lamp room report") -> bytes:
    message = EmailMessage()
    message["From"] = "Ann Keeper <ann@example.org>"
    message["To"] = "bob@example.org"
    message["Subject"] = subject
    message["Date"] = "Tue, 02 Jan 2024 10:30:00 +0100"
    if html_only:
        message.set_content(
            "<html><body><h1>Report</h1><p>The lamp burns <b>bright</b>.</p>"
            "<script>alert(1)</script></body></html>",
            subtype="html",
        )
    else:
        message.set_content("The lamp burns bright.\nAll 217 steps were swept.\n")
        message.add_alternative("<p>The lamp burns <b>bright</b> (HTML).</p>", subtype="html")
        message.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                               filename="log.pdf")  # fmt: skip
    return bytes(message)


# ---------------------------------------------------------------------------------------
# Each format, read


def test_new_formats_are_supported_and_described() -> None:
    assert NEW_SUFFIXES <= SUPPORTED_SUFFIXES
    described = FilesystemSource.description
    for name in ("PPTX", "XLSX", "EPUB", "notebooks", "JSON", "JSONL", "e-mail"):
        assert name in described


def test_pptx_one_document_per_slide_with_text(tmp_path: Path) -> None:
    path = tmp_path / "deck.pptx"
    path.write_bytes(pptx_bytes())
    docs = load(ref(path))
    assert [extra(d, "slide", "slide_count", "slide_title") for d in docs] == [
        {"slide": 1, "slide_count": 3, "slide_title": "Quarterly results"},
        {"slide": 3, "slide_count": 3, "slide_title": "Regions"},
    ]
    assert docs[0].text == (
        "# Quarterly results\n\nRevenue grew by 12 percent\n- mostly in the north\n\n"
        "Notes:\nMention the new warehouse."
    )
    assert docs[1].text == "# Regions\n\nregion | sales\nnorth | 42"
    # Without a title property, the first slide title names the deck.
    assert {d.metadata["title"] for d in docs} == {"Quarterly results"}
    assert {d.format for d in docs} == {"markdown"}
    assert docs[0].metadata["file_type"] == "pptx"


def test_pptx_title_property_wins(tmp_path: Path) -> None:
    path = tmp_path / "deck.pptx"
    path.write_bytes(pptx_bytes(core_title="Board meeting"))
    assert {d.metadata["title"] for d in load(ref(path))} == {"Board meeting"}


def test_xlsx_rows_grouped_with_sheet_and_row_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.sheets as sheets

    monkeypatch.setattr(sheets, "MAX_CHARS", 10**6)  # the row bound alone (tested below)
    path = tmp_path / "book.xlsx"
    path.write_bytes(xlsx_bytes(rows=250))
    docs = load(ref(path))
    assert [extra(d, "sheet", "first_row", "last_row") for d in docs] == [
        {"sheet": "Orders", "first_row": 3, "last_row": 103},  # row 10 is empty
        {"sheet": "Orders", "first_row": 104, "last_row": 203},
        {"sheet": "Orders", "first_row": 204, "last_row": 253},
        {"sheet": "Notes", "first_row": 1, "last_row": 1},
    ]
    assert [len(d.text.splitlines()) for d in docs] == [sheets.MAX_ROWS, sheets.MAX_ROWS, 50, 1]
    first = docs[0].text.splitlines()
    # Each row names its columns; an empty header cell is named by its column letter,
    # whole floats lose their ".0", midnight datetimes are dates.
    assert first[0] == "order: 1; customer: customer 1; column C: 2; placed: 2024-01-31"
    assert "" not in first
    assert docs[-1].text == "checked by Ann"
    assert {d.metadata["title"] for d in docs} == {"book"}


def test_xlsx_documents_stay_under_the_character_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.sheets as sheets

    monkeypatch.setattr(sheets, "MAX_CHARS", 200)
    path = tmp_path / "book.xlsx"
    path.write_bytes(xlsx_bytes(rows=20))
    docs = [d for d in load(ref(path)) if d.metadata["sheet"] == "Orders"]
    assert len(docs) > 1
    assert all(len(d.text) <= 200 for d in docs)
    # The ranges tile the data rows in order, none lost.
    rows = [(d.metadata["first_row"], d.metadata["last_row"]) for d in docs]
    assert rows[0][0] == 3 and rows[-1][1] == 23
    assert all(a[1] < b[0] for a, b in itertools.pairwise(rows))
    assert sum(len(d.text.splitlines()) for d in docs) == 20


def test_epub_one_document_per_chapter_with_titles(tmp_path: Path) -> None:
    path = tmp_path / "book.epub"
    path.write_bytes(epub_bytes())
    docs = load(ref(path))
    # The navigation page is not a chapter; the blank chapter gives no document.
    assert [extra(d, "chapter", "chapter_count", "chapter_title") for d in docs] == [
        {"chapter": 1, "chapter_count": 3, "chapter_title": "Chapter 1: Arrival"},  # the TOC's
        {"chapter": 2, "chapter_count": 3, "chapter_title": "The storm"},  # its heading
    ]
    assert docs[0].text == "# Arrival\n\nThe keeper climbed 217 steps."
    assert docs[1].text == "## The storm\n\nWaves broke over the rocks."
    assert {d.metadata["title"] for d in docs} == {"The Lighthouse"}
    assert {d.metadata["author"] for d in docs} == {"A. Keeper"}


def test_notebook_cells_fenced_outputs_left_out(tmp_path: Path) -> None:
    path = tmp_path / "analysis.ipynb"
    path.write_bytes(notebook_bytes())
    (doc,) = load(ref(path))
    assert doc.text == (
        "# Sales analysis\n\nWe load the **orders**.\n\n"
        "```r\ntotal = sum(orders)\nprint(total)\n```\n\n"
        # A code cell holding a fence gets a longer one.
        '````r\ndoc = """\n```\nnot a fence end\n```\n"""\n````'
    )
    assert "4217" not in doc.text and "raw material" not in doc.text
    assert doc.metadata["title"] == "Sales analysis"
    assert extra(doc, "language", "cells") == {"language": "r", "cells": 3}
    assert doc.format == "markdown"


def test_notebook_outputs_when_asked() -> None:
    (doc,) = parse(".ipynb", notebook_bytes(), "nb", options=FormatOptions(notebook_outputs=True))
    assert "```r\ntotal = sum(orders)\nprint(total)\n```\n\n```output\n4217\n```" in doc.text
    assert "```output\n'...'\n```" in doc.text


def test_old_notebook_format_is_converted() -> None:
    v3 = {
        "nbformat": 3,
        "nbformat_minor": 0,
        "metadata": {},
        "worksheets": [{"cells": [
            {"cell_type": "heading", "level": 1, "source": "Old notebook", "metadata": {}},
            {"cell_type": "code", "input": "x = 1", "language": "python", "outputs": [],
             "metadata": {}},
        ]}],
    }  # fmt: skip
    (doc,) = parse(".ipynb", json.dumps(v3).encode(), "nb")
    assert doc.title == "Old notebook"
    assert "```python\nx = 1\n```" in doc.text


def test_json_array_one_document_per_record(tmp_path: Path) -> None:
    records = [
        {"title": "First", "body": "The first record's body.", "id": 7},
        {"name": "Second", "content": "Content wins over body.", "body": "not this"},
        {"id": 3, "tags": ["a", "b"], "meta": {"author": "Ann", "empty": ""}},
        "a bare string record",
        {"text": "   ", "note": "blank text falls back to the record"},
    ]
    path = tmp_path / "items.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    docs = load(ref(path))
    assert [(d.metadata["record"], d.metadata["title"], d.text) for d in docs] == [
        (1, "First", "The first record's body."),
        (2, "Second", "Content wins over body."),
        (3, "items", "id: 3\ntags.1: a\ntags.2: b\nmeta.author: Ann"),
        (4, "items", "a bare string record"),
        (5, "items", "text:\nnote: blank text falls back to the record"),
    ]


def test_json_single_object_is_one_document() -> None:
    (doc,) = parse(".json", b'{"subject": "Hello", "body": "World"}', "one")
    assert (doc.title, doc.text, doc.extra) == ("Hello", "World", {})


def test_json_field_chosen_by_name_or_dotted_path() -> None:
    data = json.dumps(
        [
            {"text": "ignored", "summary": "Short summary.", "meta": {"abstract": "Deep."}},
            {"text": "no summary here"},
            {"summary": ["line one", "line two"]},
        ]
    ).encode()
    docs = parse(".json", data, "s", options=FormatOptions(json_field="summary"))
    assert [(d.extra["record"], d.text) for d in docs] == [
        (1, "Short summary."),
        (3, "line one\nline two"),
    ]
    (deep,) = parse(".json", data, "s", options=FormatOptions(json_field="meta.abstract"))
    assert (deep.extra["record"], deep.text) == (1, "Deep.")
    with pytest.raises(IngestError, match="no record has the field 'abstract'"):
        parse(".json", data, "s", options=FormatOptions(json_field="abstract"))


def test_jsonl_one_document_per_line_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text(
        '{"text": "first line"}\n\n{"text": "third line", "title": "Third"}\r\n'
        '{"text": "has \\u2028 inside"}\n',
        encoding="utf-8",
    )
    docs = load(ref(path))
    assert [(d.metadata["line"], d.metadata["title"], d.text) for d in docs] == [
        (1, "log", "first line"),
        (3, "Third", "third line"),
        (4, "log", "has \u2028 inside"),
    ]


def test_eml_plain_body_subject_sender_date_attachments(tmp_path: Path) -> None:
    path = tmp_path / "report.eml"
    path.write_bytes(eml_bytes())
    (doc,) = load(ref(path))
    assert doc.text == "The lamp burns bright.\nAll 217 steps were swept."
    assert extra(doc, "title", "from", "to", "date", "attachments") == {
        "title": "Lamp room report",
        "from": "Ann Keeper <ann@example.org>",
        "to": "bob@example.org",
        "date": "2024-01-02T10:30:00+01:00",
        "attachments": "log.pdf",
    }
    assert doc.format == "text"


def test_eml_html_body_converted_and_headers_decoded() -> None:
    (doc,) = parse(".eml", eml_bytes(html_only=True, subject="Café \x1b]0;pwned\x07 news"), "m")
    assert doc.text == "# Report\n\nThe lamp burns bright."
    assert doc.format == "markdown"
    # Encoded words are decoded; control characters are gone from the title.
    assert doc.title == "Café ]0;pwned news"


def test_eml_unknown_charset_is_detected() -> None:
    raw = "Subject: Menu\nContent-Type: text/plain; charset=x-unknown\n\nCaf\xe9 cr\xe8me br\xfbl\xe9e\n"
    (doc,) = parse(".eml", raw.encode("latin-1"), "m")
    assert doc.text == "Café crème brûlée"


def test_metadata_strings_lose_control_characters() -> None:
    raw = eml_bytes().replace(b"bob@example.org", b"=?utf-8?q?b=1Bob?= <bob@example.org>", 1)
    (doc,) = parse(".eml", raw, "m")
    assert "\x1b" not in str(doc.extra["to"])
    assert doc.extra["to"] == "bob <bob@example.org>"


# ---------------------------------------------------------------------------------------
# Broken files


def _zip(entries: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return out.getvalue()


#: A broken file of each new format and the start of the reason it is reported with.
BROKEN: dict[str, tuple[bytes, str]] = {
    "slides.pptx": (b"PK\x03\x04 not really a zip", "malformed PPTX: not a ZIP archive"),
    "wrong.pptx": (_zip({"[Content_Types].xml": b"<Types/>"}), "malformed PPTX: "),
    "sheet.xlsx": (b"name,age\nAnn,31\n", "malformed XLSX: not a ZIP archive"),
    "wrong.xlsx": (_zip({"hello.txt": b"hi"}), "malformed XLSX: "),
    "book.epub": (_zip({"mimetype": b"application/epub+zip"}), "malformed EPUB: "),
    "nb.ipynb": (b'{"cells": [', "malformed notebook: "),
    "shape.ipynb": (b'{"cells": 3}', "malformed notebook: "),
    "data.json": (b'{"a": 1, "b": }', "malformed JSON: "),
    "lines.jsonl": (b'{"text": "ok"}\n{"text": oops}\n{"text": "ok"}\n{bad\n', "malformed JSONL: "),
    "mail.eml": (bytes(range(256)) * 4, "malformed EML: no mail headers"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_are_reported_with_a_reason(tmp_path: Path, name: str) -> None:
    data, reason = BROKEN[name]
    path = tmp_path / name
    path.write_bytes(data)
    assert load_error(path).startswith(reason)


def test_broken_reasons_name_the_problem(tmp_path: Path) -> None:
    name = "lines.jsonl"
    (tmp_path / name).write_bytes(BROKEN[name][0])
    assert load_error(tmp_path / name) == (
        "malformed JSONL: line 2 is not JSON (Expecting value at column 10); 1 more bad line(s)"
    )
    (tmp_path / "data.json").write_bytes(BROKEN["data.json"][0])
    assert load_error(tmp_path / "data.json") == (
        "malformed JSON: Expecting value at line 1, column 15"
    )
    # A Word file renamed: the reason says what it is instead.
    write_docx(tmp_path / "renamed.pptx")
    assert load_error(tmp_path / "renamed.pptx") == (
        "malformed PPTX: not a PowerPoint presentation (its main part is "
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml)"
    )


def test_encrypted_epub_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "drm.epub"
    path.write_bytes(epub_bytes(encrypted=True))
    assert load_error(path) == "encrypted EPUB (DRM): its chapters cannot be read"


def test_epub_markup_counts_toward_the_element_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import connectors.ebook as ebook

    monkeypatch.setattr(ebook, "MAX_XML_ELEMENTS", 20)
    path = tmp_path / "book.epub"
    path.write_bytes(epub_bytes())
    assert load_error(path) == "EPUB refused: more than 20 XML elements (a decompression bomb?)"


def test_files_without_text_are_nothing_to_index() -> None:
    import openpyxl

    buffer = io.BytesIO()
    openpyxl.Workbook().save(buffer)
    empty: dict[str, bytes] = {
        ".xlsx": buffer.getvalue(),
        ".json": b"[]",
        ".jsonl": b"\n\n",
        ".ipynb": notebook_bytes(cells=[]),
    }
    for suffix, data in empty.items():
        with pytest.raises(NothingToIndex):
            parse(suffix, data, "empty")


# ---------------------------------------------------------------------------------------
# Through an ingest, and the options


def settings(data_dir: Path, model: str = "hashing-256") -> Settings:
    return Settings(data_dir=data_dir, embed_model=model, embed_backend="hashing")


def good_folder(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deck.pptx").write_bytes(pptx_bytes())
    (folder / "book.xlsx").write_bytes(xlsx_bytes(rows=5))
    (folder / "novel.epub").write_bytes(epub_bytes())
    (folder / "analysis.ipynb").write_bytes(notebook_bytes())
    (folder / "items.json").write_text(
        json.dumps([{"body": "first body", "summary": "first summary"}, {"body": "second"}])
    )
    (folder / "log.jsonl").write_text('{"text": "line one", "summary": "only summary"}\n')
    (folder / "report.eml").write_bytes(eml_bytes())
    return folder


def chunk_metadata(col: Any, path: Path) -> list[dict[str, Any]]:
    record = col.records.get(str(path.resolve()))
    assert record is not None, path
    return [dict(c.metadata) | {"text": c.text} for c in col.store.get(record.chunk_ids)]


def test_ingest_indexes_each_format_and_reports_the_broken_ones(tmp_path: Path) -> None:
    from rag.collection import open_collection

    folder = good_folder(tmp_path / "docs")
    for name, (data, _) in BROKEN.items():
        (folder / f"broken-{name}").write_bytes(data)
    with open_collection(settings(tmp_path / "rag"), create=True) as col:
        report = col.ingest([folder])
        failed = {Path(f.source).name: f.reason for f in report.failed}
        assert set(failed) == {f"broken-{name}" for name in BROKEN}
        for name, (_, reason) in BROKEN.items():
            assert failed[f"broken-{name}"].startswith(reason)
        assert report.added == 7
        slides = chunk_metadata(col, folder / "deck.pptx")
        assert sorted(m["slide"] for m in slides) == [1, 3]
        rows = chunk_metadata(col, folder / "book.xlsx")
        assert {(m["sheet"], m["first_row"], m["last_row"]) for m in rows} == {
            ("Orders", 3, 7),
            ("Notes", 1, 1),
        }
        chapters = chunk_metadata(col, folder / "novel.epub")
        assert {m["chapter_title"] for m in chapters} == {"Chapter 1: Arrival", "The storm"}
        records = chunk_metadata(col, folder / "items.json")
        assert sorted((m["record"], m["text"]) for m in records) == [
            (1, "first body"),
            (2, "second"),
        ]
        lines = chunk_metadata(col, folder / "log.jsonl")
        assert [(m["line"], m["text"]) for m in lines] == [(1, "line one")]
        (mail,) = chunk_metadata(col, folder / "report.eml")
        assert (mail["title"], mail["from"]) == ("Lamp room report", "Ann Keeper <ann@example.org>")


def test_format_options_reach_the_parsers_through_ingest(tmp_path: Path) -> None:
    from rag.collection import open_collection

    folder = good_folder(tmp_path / "docs")
    with open_collection(settings(tmp_path / "rag"), create=True) as col:
        report = col.ingest([folder], params={"json_field": "summary", "notebook_outputs": "yes"})
        # items.json: only the first record has a summary; the second gives no document.
        assert [m["text"] for m in chunk_metadata(col, folder / "items.json")] == ["first summary"]
        assert [m["text"] for m in chunk_metadata(col, folder / "log.jsonl")] == ["only summary"]
        (notebook,) = chunk_metadata(col, folder / "analysis.ipynb")
        assert "```output\n4217\n```" in notebook["text"]
        assert report.failed == []


def test_format_option_values_are_checked() -> None:
    def options(**params: str) -> SourceOptions:
        return SourceOptions(targets=(".",), params=tuple(params.items()))

    assert format_options(options()) == FormatOptions()
    assert format_options(options(json_field=" body ", notebook_outputs="Yes")) == FormatOptions(
        json_field="body", notebook_outputs=True
    )
    with pytest.raises(ConfigError, match="notebook_outputs takes yes or no"):
        format_options(options(notebook_outputs="maybe"))
    with pytest.raises(ConfigError, match="json_field names a field"):
        open_source("filesystem", options(json_field=" "))
    with pytest.raises(ConfigError, match="takes no option"):
        open_source("filesystem", options(json_feld="body"))


def test_cli_flag_and_source_opt_reach_the_parsers(
    tmp_path: Path, hashing_env: dict[str, str]
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "items.jsonl").write_text('{"text": "the default text", "summary": "zebra-42"}\n')
    (folder / "nb.ipynb").write_bytes(notebook_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "apps.cli", "ingest", str(folder), "--json-field", "summary",
         "--source-opt", "notebook_outputs=yes", "--json"],
        env=hashing_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["failed"] == []
    from rag.collection import open_collection

    data_dir = Path(hashing_env["RAG_DATA_DIR"])
    with open_collection(settings(data_dir, hashing_env["RAG_EMBED_MODEL"])) as col:
        (record,) = chunk_metadata(col, folder / "items.jsonl")
        assert record["text"] == "zebra-42"
        (notebook,) = chunk_metadata(col, folder / "nb.ipynb")
        assert "```output\n4217\n```" in notebook["text"]
