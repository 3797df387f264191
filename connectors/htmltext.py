"""HTML to Markdown-flavoured plain text, with BeautifulSoup's built-in ``html.parser``.

Headings become ``#`` lines, list items ``- `` lines, table rows ``cell | cell`` lines, and
every other block element its own paragraph; scripts, styles, navigation and other
invisible parts are dropped. Kept separate from the file parsers so that a web connector
can reuse :func:`html_to_text`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from connectors.parsers import Parsed, normalize_text
from rag.errors import IngestError

if TYPE_CHECKING:
    from bs4 import BeautifulSoup, Tag

_DROPPED = (
    "script", "style", "nav", "noscript", "svg", "template",
    "head", "title", "meta", "link", "base", "iframe", "object", "embed", "canvas",
)  # fmt: skip
_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_BLOCKS = frozenset(
    {
        "address", "article", "aside", "blockquote", "body", "caption", "center", "dd",
        "details", "dialog", "div", "dl", "dt", "fieldset", "figcaption", "figure", "footer",
        "form", "header", "hgroup", "hr", "html", "legend", "li", "main", "menu", "ol", "p",
        "pre", "section", "summary", "table", "tbody", "tfoot", "thead", "tr", "ul",
    }
)  # fmt: skip
# Blocks after which a blank line keeps paragraphs apart.
_PARAGRAPHS = frozenset(
    {
        "p", "pre", "blockquote", "table", "ul", "ol", "dl", "figure", "section", "article",
        "header", "footer", "main", "aside", "details", "form",
    }
)  # fmt: skip
_SPACES = re.compile(r"\s+")


def _collapse(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


def _is_text(node: object) -> bool:
    from bs4 import NavigableString
    from bs4.element import CData, PreformattedString

    # Comments, doctypes, processing instructions and the like are PreformattedStrings.
    return isinstance(node, NavigableString) and (
        isinstance(node, CData) or not isinstance(node, PreformattedString)
    )


def _inline(tag: Tag) -> str:
    """The text of ``tag`` on one line; block boundaries and ``<br>`` become spaces."""
    from bs4 import Tag

    parts: list[str] = []
    for node in tag.descendants:
        if isinstance(node, Tag):
            if node.name in _BLOCKS or node.name in _HEADINGS or node.name in ("br", "td", "th"):
                parts.append(" ")
        elif _is_text(node):
            parts.append(str(node))
    return _collapse("".join(parts))


class _Writer:
    """Accumulates inline text and turns it into lines at block boundaries."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.inline: list[str] = []
        self.prefix = ""

    def flush(self) -> None:
        text = _collapse("".join(self.inline))
        self.inline.clear()
        if text:
            self.lines.append(self.prefix + text)
            self.prefix = ""

    def line(self, text: str, *, paragraph: bool = False) -> None:
        self.flush()
        if paragraph:
            self.blank()
        self.lines.append(text)
        if paragraph:
            self.blank()

    def blank(self) -> None:
        if self.lines and self.lines[-1]:
            self.lines.append("")


def _render(tag: Tag, out: _Writer, depth: int) -> None:
    from bs4 import Tag

    for node in tag.children:
        if not isinstance(node, Tag):
            if _is_text(node):
                out.inline.append(str(node))
            continue
        name = node.name
        if name in _HEADINGS:
            text = _inline(node)
            if text:
                out.line("#" * _HEADINGS[name] + " " + text, paragraph=True)
        elif name == "br":
            out.flush()
        elif name == "tr":
            cells = [_inline(cell) for cell in node.find_all(("td", "th"), recursive=False)]
            if any(cells):
                out.line(" | ".join(cells))
        elif name == "pre":
            out.flush()
            out.blank()
            for line in node.get_text().strip("\n").split("\n"):
                out.lines.append(line.rstrip())
            out.blank()
        elif name == "li":
            out.flush()
            out.prefix = "  " * max(depth - 1, 0) + "- "
            _render(node, out, depth)
            out.flush()
            out.prefix = ""
        elif name in ("ul", "ol"):
            out.flush()
            if depth == 0:
                out.blank()
            _render(node, out, depth + 1)
            out.flush()
            if depth == 0:
                out.blank()
        elif name in _BLOCKS:
            out.flush()
            _render(node, out, depth)
            out.flush()
            if name in _PARAGRAPHS:
                out.blank()
        else:
            _render(node, out, depth)


def _soup(html: str | bytes) -> BeautifulSoup:
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "html.parser")


def _convert(soup: BeautifulSoup) -> tuple[str, str | None]:
    from bs4 import Tag

    title = _collapse(soup.title.get_text()) if soup.title is not None else ""
    for tag in soup.find_all(_DROPPED):
        tag.decompose()
    if not title:
        h1 = soup.find("h1")
        title = _inline(h1) if isinstance(h1, Tag) else ""
    out = _Writer()
    _render(soup, out, 0)
    out.flush()
    text = normalize_text("\n".join(out.lines))
    return re.sub(r"\n{3,}", "\n\n", text), title or None


def html_to_text(html: str | bytes) -> tuple[str, str | None]:
    """Convert an HTML page to text with Markdown headings; return the text and the title
    (``<title>``, else the first ``<h1>``, else None)."""
    return _convert(_soup(html))


def parse_html(data: bytes, stem: str) -> list[Parsed]:
    """An HTML file; the encoding comes from its BOM, ``<meta charset>`` or detection."""
    if b"\x00" in data and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise IngestError("binary content, not text")
    soup = _soup(data)
    text, title = _convert(soup)
    encoding = (soup.original_encoding or "").lower().replace("_", "-")
    extra: dict[str, str | int | float | bool] = {}
    if encoding and encoding not in ("utf-8", "ascii", "us-ascii"):
        extra["encoding"] = encoding
    return [Parsed(text, title or stem, "markdown", extra)]
