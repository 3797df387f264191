"""What a fetched response holds, for the web source.

:func:`describe` tells what kind of thing a response is (an HTML page, a document one of
the file parsers reads, a sitemap, or something else), and gathers what the crawl needs
from it: the links to follow, the canonical address, and whether the page asks not to be
indexed or followed (``<meta name="robots">``, ``X-Robots-Tag``). :func:`html_content`
extracts a page's main content as Markdown, without navigation and boilerplate
(trafilatura; the plain HTML converter of :mod:`connectors.htmltext` when trafilatura finds
nothing), with its title and headings.

lxml and trafilatura are imported on first use.
"""

from __future__ import annotations

import codecs
import mimetypes
import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from connectors.formats import PARSERS
from connectors.httpfetch import normalize
from connectors.parsers import normalize_text
from rag.errors import IngestError

if TYPE_CHECKING:
    from connectors.httpfetch import Response

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_XML_TYPES = frozenset(
    {"application/xml", "text/xml", "application/gzip", "application/x-gzip", ""}
)
#: Link suffixes not worth a request: images, media, archives, styles, scripts, fonts.
NOT_DOCUMENTS = frozenset(
    {
        ".png", ".jpg", ".jpeg", ".gif", ".svg", ".webp", ".ico", ".bmp", ".tif", ".tiff",
        ".avif", ".mp3", ".mp4", ".m4a", ".webm", ".avi", ".mov", ".mkv", ".wav", ".ogg",
        ".flac", ".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".exe", ".dmg",
        ".iso", ".bin", ".css", ".js", ".mjs", ".map", ".woff", ".woff2", ".ttf", ".eot",
        ".otf", ".apk", ".deb", ".rpm", ".msi", ".whl", ".jar",
    }
)  # fmt: skip
_TYPE_SUFFIXES = {
    "application/pdf": ".pdf",
    "text/plain": ".txt",
    "text/markdown": ".md",
    "text/x-markdown": ".md",
    "text/x-rst": ".rst",
    "text/csv": ".csv",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": ".docx",
    "application/json": ".json",
    "application/x-ndjson": ".jsonl",
    "application/jsonl": ".jsonl",
    "application/x-ipynb+json": ".ipynb",
    "message/rfc822": ".eml",
}
#: Links kept from one page (in order of appearance).
MAX_LINKS = 5000
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>")
_HEADINGS_XPATH = (
    "//*[self::h1 or self::h2 or self::h3 or self::h4 or self::h5 or self::h6]"
    "[not(ancestor::nav or ancestor::footer or ancestor::aside)]"
)
MAX_HEADINGS = 200
_SPACES = re.compile(r"\s+")


@dataclass
class Described:
    """What the crawl needs from a response."""

    #: "html", "document" (a file one of the parsers reads), "sitemap" or "other".
    kind: str
    #: The parser's suffix (``.html`` for pages, ``.pdf``...); "" for sitemaps and others.
    suffix: str = ""
    #: Pages to follow, or for a sitemap the pages it lists (absolute, normalised).
    links: list[str] = field(default_factory=list)
    #: Sitemaps a sitemap index lists.
    sitemaps: list[str] = field(default_factory=list)
    canonical: str | None = None
    noindex: bool = False


def url_suffix(url: str) -> str:
    """The lower-case suffix of the last segment of ``url``'s path ("" when none)."""
    segment = urlsplit(url).path.rsplit("/", 1)[-1]
    dot = segment.rfind(".")
    return segment[dot:].lower() if dot > 0 else ""


def document_suffix(url: str, content_type: str) -> str | None:
    """The parser suffix for a response that is not HTML: the suffix of its address when a
    parser reads that (servers often say ``application/octet-stream`` or ``application/json``
    for a notebook), else one for its media type; ``None`` when no parser reads it."""
    suffix = url_suffix(url)
    if suffix in PARSERS and suffix not in (".html", ".htm"):
        return suffix
    if content_type in _TYPE_SUFFIXES and _TYPE_SUFFIXES[content_type] in PARSERS:
        return _TYPE_SUFFIXES[content_type]
    for guess in mimetypes.guess_all_extensions(content_type):
        if guess in PARSERS and guess not in (".html", ".htm"):
            return guess
    return None


def describe(r: Response, *, sitemap_ok: bool, max_bytes: int) -> Described:
    """What ``r`` is, with its links; raises :class:`~rag.errors.IngestError` for a page
    that cannot be read. ``sitemap_ok``: XML may be a sitemap (it was given as one, or a
    sitemap index lists it)."""
    header = set(_tokens(r.robots_tag))
    if r.content_type in HTML_TYPES:
        doc = parse_html(r.body, r.charset)
        meta = set(header)
        for el in doc.xpath("//meta[@name][@content]"):
            if el.get("name", "").strip().lower() in ("robots", "ragkit"):
                meta |= set(_tokens(el.get("content", "")))
        base = r.url
        for href in doc.xpath("//base/@href")[:1]:
            base = urljoin(r.url, str(href).strip())
        canonical = None
        for el in doc.xpath("//link[@rel][@href]"):
            if "canonical" in el.get("rel", "").lower().split():
                canonical = normalize(urljoin(base, el.get("href", "").strip()))
                break
        links: list[str] = []
        if not meta & {"nofollow", "none"}:
            links = _links(doc, base)
        return Described(
            "html", ".html", links, canonical=canonical, noindex=bool(meta & {"noindex", "none"})
        )
    if sitemap_ok and r.content_type in _XML_TYPES | {"text/plain"}:
        found = _sitemap(r.body, max_bytes)
        if found is not None:
            return found
    suffix = document_suffix(r.url, r.content_type)
    if suffix is None:
        return Described("other")
    return Described("document", suffix, noindex=bool(header & {"noindex", "none"}))


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.replace(";", ",").split(",") if t.strip()]


def _links(doc: Any, base: str) -> list[str]:
    seen: dict[str, None] = {}
    for el in doc.xpath("//a[@href] | //area[@href]"):
        if "nofollow" in el.get("rel", "").lower().split():
            continue
        url = normalize(urljoin(base, el.get("href", "").strip()))
        if url is not None and url not in seen:
            seen[url] = None
            if len(seen) >= MAX_LINKS:
                break
    return list(seen)


def _sitemap(body: bytes, max_bytes: int) -> Described | None:
    """A sitemap (``<urlset>``) or sitemap index, plain or gzipped; ``None`` otherwise."""
    from lxml import etree

    if body[:2] == b"\x1f\x8b":
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            body = inflate.decompress(body, max_bytes)
        except zlib.error as e:
            raise IngestError(f"could not read the gzipped sitemap: {e}") from e
        if inflate.unconsumed_tail:
            raise IngestError("the gzipped sitemap expands past the size limit")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        root = etree.fromstring(body, parser=parser)
    except etree.XMLSyntaxError:
        return None
    tag = etree.QName(root).localname if isinstance(root.tag, str) else ""
    if tag not in ("urlset", "sitemapindex"):
        return None
    urls: dict[str, None] = {}
    for el in root.iter():
        if isinstance(el.tag, str) and etree.QName(el).localname == "loc" and el.text:
            url = normalize(el.text.strip())
            if url is not None:
                urls[url] = None
    if tag == "sitemapindex":
        return Described("sitemap", sitemaps=list(urls))
    return Described("sitemap", links=list(urls))


# ---------------------------------------------------------------------------------------
# HTML


def decode_html(body: bytes, charset: str | None) -> str:
    """The text of an HTML page: by its BOM, else the charset its server or its
    ``<meta charset>`` declares, else UTF-8, else what detection finds."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if body.startswith(bom):
            return body.decode(encoding, "replace")
    declared = [charset]
    if m := _META_CHARSET.search(body[:4096]):
        declared.append(m.group(1).decode("ascii"))
    for encoding in declared:
        if encoding:
            try:
                return body.decode(encoding, "replace")
            except LookupError:
                continue
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(body[: 2**20]).best()
    return body.decode(best.encoding if best else "cp1252", "replace")


def parse_html(body: bytes, charset: str | None) -> Any:
    """The lxml document of an HTML page."""
    import lxml.html
    from lxml.etree import ParserError

    text = _XML_DECLARATION.sub("", decode_html(body, charset), count=1)
    try:
        return lxml.html.document_fromstring(text)
    except (ParserError, ValueError) as e:
        raise IngestError(f"could not parse HTML: {e}") from e


def html_content(body: bytes, charset: str | None, url: str) -> tuple[str, str, list[str]]:
    """The main content of a page as Markdown, its title, and its headings in order (from
    the page itself: the extractor leaves out those it takes for the title).

    Raises :class:`~rag.errors.IngestError` when the page cannot be parsed."""
    import trafilatura

    from connectors.htmltext import html_to_text

    doc = parse_html(body, charset)
    title = " ".join(" ".join(doc.xpath("//title//text()")).split())
    if not title:
        title = " ".join(" ".join(doc.xpath("(//h1)[1]//text()")).split())
    text = decode_html(body, charset)
    try:
        main = trafilatura.extract(
            _XML_DECLARATION.sub("", text, count=1),
            url=url,
            output_format="markdown",
            include_formatting=True,
            include_tables=True,
            include_links=False,
            include_images=False,
            include_comments=False,
            deduplicate=False,
        )
    except Exception:  # an extractor failure falls back to the plain conversion
        main = None
    if not main or not main.strip():
        main, _ = html_to_text(text)
    return normalize_text(main), title, _page_headings(doc)


def _page_headings(doc: Any) -> list[str]:
    """The page's headings in order, outside navigation, footers and sidebars."""
    found = []
    for el in doc.xpath(_HEADINGS_XPATH)[:MAX_HEADINGS]:
        text = _SPACES.sub(" ", " ".join(el.xpath(".//text()"))).strip()
        if text:
            found.append(text)
    return found
