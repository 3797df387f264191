"""E-books (.epub) with EbookLib: one document per chapter, in reading order.

A chapter is an item of the book's spine (its reading order) that holds text; the
navigation document (the table of contents as a page) is left out. Each chapter's XHTML is
converted by :func:`connectors.htmltext.html_to_text`, so headings become ``#`` lines.

Metadata: ``chapter`` (the item's position in the reading order, from 1, the navigation
document not counted: a cover or title page counts, as it does in a reader's page list),
``chapter_count`` (the spine's items so counted), and ``chapter_title``: the title the
book's table of contents gives the item, else the chapter's first heading, else its
``<title>`` when that is not just the book's title. The document title is the book's
title (Dublin Core ``title``), else the file name; ``author`` lists its creators.

A book whose content documents are encrypted (DRM, declared in
``META-INF/encryption.xml``) is reported as such: its chapters would be ciphertext. Fonts
obfuscated as the EPUB standard allows do not count.

The archive passes :func:`connectors.office.check_zip`, and its XHTML parts the same
element limit, before EbookLib opens it.
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from typing import Any
from urllib.parse import unquote

from connectors.office import MAX_XML_ELEMENTS, _elements, _refused, check_zip
from connectors.parsers import Parsed, short_message
from rag.errors import IngestError
from rag.types import MetadataValue

_MARKUP_SUFFIXES = (".xhtml", ".html", ".htm", ".opf", ".ncx", ".svg")
_HEADING = re.compile(r"^#{1,6} (.+)$", re.MULTILINE)
_ENCRYPTED_CONTENT = re.compile(rb"URI=[\"'][^\"']*\.x?html?[\"']", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _check_archive(data: bytes) -> None:
    """The ZIP limits of :func:`check_zip`, the element limit over the XHTML parts too
    (check_zip counts ``.xml`` parts only), and no encrypted content documents."""
    check_zip(data, "EPUB")
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        elements = 0
        for info in archive.infolist():
            if info.filename.lower().endswith(_MARKUP_SUFFIXES):
                try:
                    elements += _elements(archive, info)
                except Exception as e:  # a bad CRC, zlib.error, an unknown compression
                    raise IngestError(f"malformed EPUB: {short_message(e)}") from e
                if elements > MAX_XML_ELEMENTS:
                    raise _refused("EPUB", f"more than {MAX_XML_ELEMENTS:,} XML elements")
        if "META-INF/encryption.xml" in archive.namelist():
            declared = archive.read("META-INF/encryption.xml")
            if _ENCRYPTED_CONTENT.search(declared):
                raise IngestError("encrypted EPUB (DRM): its chapters cannot be read")


def _href(href: str) -> str:
    return posixpath.normpath(unquote(href.split("#", 1)[0]))


def _toc_titles(toc: Any) -> dict[str, str]:
    """Chapter titles by file name (as the manifest names it, and by its last part), from
    the book's table of contents; the first entry for a file wins."""
    from ebooklib import epub

    titles: dict[str, str] = {}

    def add(href: str | None, title: str | None) -> None:
        title = _collapse(title or "")
        if href and title:
            path = _href(href)
            titles.setdefault(path, title)
            titles.setdefault(posixpath.basename(path), title)

    def walk(entries: Any) -> None:
        for entry in entries or ():
            if isinstance(entry, tuple | list) and len(entry) == 2:
                section, children = entry
                add(getattr(section, "href", None), getattr(section, "title", None))
                walk(children)
            elif isinstance(entry, epub.Link):
                add(entry.href, entry.title)
            elif isinstance(entry, epub.EpubHtml):
                add(entry.file_name, entry.title)

    walk(toc)
    return titles


def _metadata(book: Any, name: str) -> list[str]:
    values = [_collapse(str(value)) for value, _ in book.get_metadata("DC", name) or ()]
    return [v for v in values if v]


def _chapter_title(text: str, html_title: str | None, book_title: str) -> str:
    heading = _HEADING.search(text)
    if heading:
        return _collapse(heading.group(1))
    html_title = _collapse(html_title or "")
    return html_title if html_title and html_title != book_title else ""


def parse_epub(data: bytes, stem: str) -> list[Parsed]:
    """One document per chapter with text; see the module docstring."""
    from ebooklib import epub

    from connectors.htmltext import html_to_text

    _check_archive(data)
    try:
        book = epub.read_epub(io.BytesIO(data), {"ignore_ncx": False})
    except epub.EpubException as e:
        raise IngestError(f"malformed EPUB: {e.msg}") from e
    except Exception as e:  # EbookLib lets lxml's and its own lookup errors through
        raise IngestError(f"malformed EPUB: {short_message(e)}") from e

    titles = _toc_titles(book.toc)
    chapters = []
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if isinstance(item, epub.EpubHtml) and not isinstance(item, epub.EpubNav):
            chapters.append(item)
    if not chapters:
        raise IngestError("malformed EPUB: no chapters in its reading order")

    book_title = next(iter(_metadata(book, "title")), "")
    authors = _metadata(book, "creator")
    parsed = []
    for number, item in enumerate(chapters, 1):
        text, html_title = html_to_text(item.content or b"")
        path = _href(item.file_name)
        chapter_title = (
            titles.get(path)
            or titles.get(posixpath.basename(path))
            or _chapter_title(text, html_title, book_title)
        )
        extra: dict[str, MetadataValue] = {"chapter": number, "chapter_count": len(chapters)}
        if chapter_title:
            extra["chapter_title"] = chapter_title
        if authors:
            extra["author"] = ", ".join(authors)
        parsed.append(Parsed(text, book_title or stem, "markdown", extra))
    return parsed
