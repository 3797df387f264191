"""The web source: a polite same-site crawl, kept in step incrementally.

:class:`WebSource` is the ``web`` source plugin (:mod:`rag.source`). Its targets are start
pages (``https://docs.example.org/``), sitemaps (``https://site/sitemap.xml``, gzipped or
not, sitemap indexes too) or files of addresses, one a line (``#`` starts a comment).

The crawl (:mod:`connectors.crawl`) happens in :meth:`WebSource.scan`: it fetches every
page it reaches, conditionally when the last crawl saw it (``If-None-Match``,
``If-Modified-Since``), so that an unchanged site costs one request per page and nothing
else; keeps the bodies of changed pages on disk until :meth:`WebSource.load` parses them;
and saves what the next crawl needs in the state folder the collection gives it
(``crawl.json``: per address its validators, body hash and size, links and canonical
address; per host its ``robots.txt``). An item's ``mtime`` is a token of its body's hash,
so an unchanged page is skipped without being read again. The state is saved when a crawl
finishes: a crawl cut short leaves the last one's, and a page whose cached body is gone
(a crash between crawl and parsing) is fetched again when it is parsed.

Fetching is in :mod:`connectors.httpfetch`; what a response holds (links, main content) in
:mod:`connectors.webpage`; documents other than HTML (PDF, DOCX, text...) go through the
file parsers of :mod:`connectors.formats`.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import tempfile
import weakref
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from connectors.crawl import (
    BodyCache,
    Crawl,
    Page,
    Patterns,
    Scope,
    entry_for,
)
from connectors.formats import FORMAT_OPTIONS, format_options, parse
from connectors.httpfetch import Fetcher, FetchError, Robots, normalize
from connectors.parsers import Parsed, clean_text, short_message
from connectors.webpage import describe, html_content
from rag.contract import check_metadata
from rag.errors import ConfigError, IngestError, MetadataError, NothingToIndex
from rag.source import SourceItem, SourceOptions
from rag.types import Document, Failure, Skipped

STATE_FILE = "crawl.json"
STATE_VERSION = 1
#: Lines read from a file of addresses.
MAX_URL_LINES = 100_000


def _number(options: SourceOptions, name: str, default: float, *, whole: bool) -> float:
    """The source option ``name`` as a number above 0 (a whole one ``>= 0`` for ``depth``)."""
    raw = options.param(name)
    flag = "--" + name.replace("_", "-")
    if raw is None:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{flag} takes {kind}, not {raw!r}") from None
    least = 0 if name == "depth" else (1 if whole else 0)
    if not math.isfinite(value) or value < least or (not whole and value == 0):
        raise ConfigError(f"{flag} must be {'at least' if whole else 'above'} {least}, not {raw!r}")
    return value


class WebSource:
    """Web sites, crawled from start pages, sitemaps or files of addresses (see the module
    docstring). The ``web`` source plugin.

    An item's id is the page's address as :func:`~connectors.crawl.normalize` spells it:
    its canonical address (``<link rel="canonical">``) when that lies inside the crawl, else
    the address that answered (after redirects), so two addresses of one page are indexed
    once. Include and exclude patterns are globs over the address relative to the folder of
    its start page (``api/**``, ``*.pdf``): excluded addresses are not fetched, and pages
    outside ``--include`` are fetched for their links but not indexed.

    A recorded page is covered (so a full cleanup removes it when the crawl does not reach
    it: it answered 404 or 410, or nothing links to it any more) when it lies in the scope of
    a start page and the patterns select it; except when it could not be fetched this time
    (a 500, a timeout: it stays), and except everything in a scope whose crawl was cut
    short (its start page or ``robots.txt`` could not be read, or ``--max-pages`` was hit),
    where only pages known to be gone are removed.
    """

    name = "web"
    description = "web sites: a same-site crawl from pages, sitemaps or lists of addresses"
    options: ClassVar[dict[str, str]] = {
        "depth": "links followed from each start page (default 3; 0: the start pages only)",
        "max_pages": "most addresses fetched in one crawl (default 500)",
        "rate": "requests a second to one host (default 2; robots.txt may ask for fewer)",
        "connections": "most connections open at once (default 4)",
        "timeout": "seconds a request may take, connecting to last byte (default 30)",
        **FORMAT_OPTIONS,
    }

    @classmethod
    def claims(cls, target: str) -> bool:
        return target.strip().lower().startswith(("http://", "https://"))

    def __init__(self, options: SourceOptions) -> None:
        if not options.targets:
            raise ConfigError("name at least one web address, sitemap or file of addresses")
        self.options = options
        self.depth = int(_number(options, "depth", 3, whole=True))
        self.max_pages = int(_number(options, "max_pages", 500, whole=True))
        self.rate = _number(options, "rate", 2.0, whole=False)
        self.connections = int(_number(options, "connections", 4, whole=True))
        self.timeout = _number(options, "timeout", 30.0, whole=False)
        self.formats = format_options(options)
        self.patterns = Patterns(options.include, options.exclude)  # bad globs fail here
        self._bad: list[Failure] = []
        self.starts = self._start_pages(options.targets)
        self.scopes = list(dict.fromkeys(Scope.of(u) for u in self.starts))
        self._crawl: Crawl | None = None
        self._pages: dict[str, Page] = {}
        self._saved: dict[str, dict[str, Any]] = {}
        self._robots: Robots | None = None
        self._cache: BodyCache | None = None
        if options.state_dir is not None:
            self.state_dir = Path(options.state_dir)
        else:  # no state kept between runs: bodies still wait on disk, not in memory
            tmp = tempfile.TemporaryDirectory(prefix="ragkit-web-")
            weakref.finalize(self, tmp.cleanup)
            self.state_dir = Path(tmp.name)

    def _start_pages(self, targets: tuple[str, ...]) -> list[str]:
        starts: list[str] = []
        for target in targets:
            if self.claims(target):
                url = normalize(target)
                if url is None:
                    raise ConfigError(f"{target!r} is not a web address")
                starts.append(url)
                continue
            path = os.path.expanduser(target)
            if not os.path.isfile(path):
                raise ConfigError(f"{target}: neither an http(s) address nor a file of addresses")
            try:
                with open(path, encoding="utf-8") as f:
                    lines = [line for _, line in zip(range(MAX_URL_LINES), f, strict=False)]
            except (OSError, UnicodeDecodeError) as e:
                raise ConfigError(f"{target}: cannot read this file of addresses: {e}") from e
            for n, line in enumerate(lines, 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                url = normalize(line) if self.claims(line) else None
                if url is None:
                    self._bad.append(
                        Failure(f"{target}:{n}", f"not an http(s) address: {line[:200]!r}")
                    )
                else:
                    starts.append(url)
        return list(dict.fromkeys(starts))

    # --- the contract ------------------------------------------------------------------

    def scan(self) -> Iterator[SourceItem | Failure | Skipped]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = self._load_state()
        self._saved = state["pages"]
        self._pages = {}
        self._cache = BodyCache(self.state_dir / "bodies")
        fetcher = self._fetcher()
        self._robots = Robots(fetcher, state["robots"])
        crawl = Crawl(
            starts=self.starts,
            scopes=self.scopes,
            patterns=self.patterns,
            depth=self.depth,
            max_pages=self.max_pages,
            fetcher=fetcher,
            robots=self._robots,
            saved=self._saved,
            cache=self._cache,
        )
        yield from self._bad
        try:
            for found in crawl.run():
                if isinstance(found, Page):
                    self._pages[found.id] = found
                    yield SourceItem(found.id, found.entry["size"], token(found.entry["hash"]))
                else:
                    yield found
        finally:
            fetcher.close()
        self._crawl = crawl
        self._save_state(crawl, state["robots"])
        self._cache.keep_only(p.url for p in self._pages.values())

    def load(self, item: SourceItem) -> list[Document]:
        page = self._pages.get(item.id)
        url = page.url if page is not None else self._located_url(item.id)
        entry = page.entry if page is not None else None
        body = self._cache.take(url) if self._cache is not None else None
        if entry is None or body is None or hashlib.sha256(body).hexdigest() != entry["hash"]:
            entry, body = self._refetch(url)
        return self._documents(item.id, url, entry, body)

    def covers(self, source_id: str) -> bool:
        crawl = self._crawl
        if crawl is None or source_id in crawl.kept:
            return False
        scope = crawl.scope_of(source_id)
        rel = None if scope is None else scope.relative(source_id)
        if scope is None or rel is None or not self.patterns.accepts(rel):
            return False
        if crawl.truncated or scope in crawl.incomplete:
            return source_id in crawl.gone
        return True

    def locate(self, source_id: str) -> SourceItem | None:
        url = self._located_url(source_id)
        entry = self._saved.get(url)
        if not entry or "hash" not in entry:
            return None
        return SourceItem(source_id, entry["size"], token(entry["hash"]))

    # --- helpers -----------------------------------------------------------------------

    def _fetcher(self) -> Fetcher:
        return Fetcher(
            rate=self.rate,
            connections=self.connections,
            timeout=self.timeout,
            max_bytes=self.options.max_bytes,
        )

    def _located_url(self, source_id: str) -> str:
        """The address that answered for the page recorded as ``source_id``."""
        for url, entry in self._saved.items():
            if entry.get("canonical") == source_id and "hash" in entry:
                return url
        return source_id

    def _refetch(self, url: str) -> tuple[dict[str, Any], bytes]:
        """Fetch a page whose body is not cached (its crawl was cut short, or the cache
        was full), unconditionally."""
        fetcher = self._fetcher()
        crawl = self._crawl
        try:
            if self._robots is not None:
                self._robots.check(url)
            r = fetcher.get(url, check=crawl.check_hop if crawl is not None else lambda _: None)
            d = describe(r, sitemap_ok=False, max_bytes=fetcher.max_bytes)
        except FetchError as e:
            raise IngestError(e.reason) from e
        except IngestError:
            raise
        except Exception as e:  # a page that breaks the parser is one failure
            raise IngestError(f"could not read the page: {short_message(e)}") from e
        finally:
            fetcher.close()
        if d.kind not in ("html", "document"):
            raise NothingToIndex(f"unsupported content type ({r.content_type or 'none given'})")
        return entry_for(r, d), r.body

    def _documents(
        self, page_id: str, url: str, entry: dict[str, Any], body: bytes
    ) -> list[Document]:
        if not body:
            raise NothingToIndex("empty page")
        common: dict[str, Any] = {
            "source": page_id,
            "url": page_id,
            "fetched_at": entry["fetched_at"],
            "content_hash": entry["hash"],
            "size": entry["size"],
            "file_type": entry["suffix"].lstrip("."),
            "content_type": entry["content_type"] or None,
            "last_modified": iso_date(entry.get("last_modified")),
        }
        stem = _stem(url)
        if entry["kind"] == "html":
            try:
                text, title, headings = html_content(body, entry.get("charset"), url)
            except IngestError:
                raise
            except Exception as e:  # a page that breaks the extractor is one failure
                raise IngestError(f"could not read the page: {short_message(e)}") from e
            if not text.strip():
                raise NothingToIndex("no text")
            title = " ".join(clean_text(title).split()) or stem
            parts = [Parsed(text, title, "markdown", {"headings": " | ".join(headings)})]
        else:
            parts = [
                replace(p, extra={"headings": " | ".join(_headings(p.text, p.format)), **p.extra})
                for p in parse(entry["suffix"], body, stem, options=self.formats)
            ]
        docs = []
        try:
            for p in parts:
                meta = {**common, "title": p.title, **p.extra}
                meta = {k: v for k, v in meta.items() if v is not None and v != ""}
                docs.append(Document(page_id, p.text, check_metadata(meta), p.format))
        except MetadataError as e:
            raise IngestError(f"unusable metadata: {e}") from e
        return docs

    def _load_state(self) -> dict[str, Any]:
        path = self.state_dir / STATE_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            state = {}
        except (OSError, ValueError):  # a damaged state costs a full crawl, nothing else
            state = {}
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            state = {}
        pages = state.get("pages") if isinstance(state.get("pages"), dict) else {}
        robots = state.get("robots") if isinstance(state.get("robots"), dict) else {}
        return {"pages": pages, "robots": robots}

    def _save_state(self, crawl: Crawl, robots: dict[str, Any]) -> None:
        """The entries this crawl reached, and the last crawl's for what it did not decide
        about: addresses outside its scopes, and inside a scope it could not finish."""
        pages = {}
        for url, entry in self._saved.items():
            scope = crawl.scope_of(url)
            if scope is None or crawl.truncated or scope in crawl.incomplete:
                pages[url] = entry
        pages.update(crawl.pages)
        state = {"version": STATE_VERSION, "pages": pages, "robots": robots}
        data = json.dumps(state, ensure_ascii=False, sort_keys=True).encode("utf-8")
        atomic_write(self.state_dir / STATE_FILE, data)


def _stem(url: str) -> str:
    """A fallback title: the last segment of the path without its suffix, else the host."""
    parts = urlsplit(url)
    segment = unquote(parts.path.rstrip("/").rsplit("/", 1)[-1])
    stem = segment.rsplit(".", 1)[0] if "." in segment[1:] else segment
    return stem or parts.hostname or url


def _headings(text: str, fmt: str) -> list[str]:
    if fmt != "markdown":
        return []
    return [
        line.lstrip("#").strip()
        for line in text.splitlines()
        if line.startswith("#") and line.lstrip("#").startswith(" ")
    ]


def token(digest: str) -> float:
    """A change token for :class:`~rag.source.SourceItem`'s ``mtime``: 52 bits of a body's
    hash, exact as a float."""
    return float(int(digest[:13], 16))


def iso_date(http_date: str | None) -> str | None:
    """An HTTP date (``Last-Modified``) as ISO 8601 UTC, or ``None``."""
    import email.utils

    if not http_date:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(http_date)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).isoformat(timespec="seconds")


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so that a crash leaves the old file or the new one, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
