"""The web source's crawl: which addresses belong to it, and the walk over them.

A crawl starts from start pages (or sitemaps) and follows links breadth first, level by
level, to ``depth`` links from a start page, staying inside the :class:`Scope` of a start
page (its host and the folder of its path) and out of what the exclude patterns name. Each
level is fetched on a pool of ``connections`` threads, and its results are taken in the
order the links were found, so that what a crawl yields does not depend on which request
answered first.

It keeps, per address that answered, what the next crawl needs (:func:`entry_for`): the
validators, so that it asks conditionally and a ``304 Not Modified`` costs nothing; the hash
and size of the body; and the page's links and canonical address, so that a page that did
not change, or could not be fetched this time, still leads to the pages it links to.
"""

from __future__ import annotations

import datetime
import hashlib
import threading
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from connectors.filesystem import _glob_regex
from connectors.httpfetch import (
    Fetcher,
    FetchError,
    Response,
    Robots,
    Validators,
    origin_of,
)
from connectors.parsers import short_message
from connectors.webpage import NOT_DOCUMENTS, Described, describe, url_suffix
from rag.errors import IngestError
from rag.types import Failure, Skipped

#: Sitemaps read in one crawl, nested ones included.
MAX_SITEMAPS = 100
#: Bytes of changed bodies kept on disk between the crawl and their parsing; past it, a
#: body is fetched again when it is parsed.
CACHE_BUDGET = 512 * 2**20


@dataclass(frozen=True, slots=True)
class Scope:
    """What one start address spans: its host, and paths below the folder of its path
    (``https://site/docs/`` spans ``/docs/...``; ``https://site/docs/intro.html`` too)."""

    origin: str
    prefix: str

    @classmethod
    def of(cls, url: str) -> Scope:
        path = urlsplit(url).path or "/"
        return cls(origin_of(url), path[: path.rfind("/") + 1])

    @property
    def root(self) -> str:
        return self.origin + self.prefix

    def relative(self, url: str) -> str | None:
        """``url`` relative to the folder (with its query), or ``None`` outside the scope."""
        if not url.startswith(self.root):
            return None
        return url[len(self.root) :]


class Patterns:
    """The include and exclude globs, over an address relative to its scope's folder
    (``api/index.html``, ``blog/**``, ``*?print=1``), as :mod:`connectors.filesystem`
    matches paths."""

    def __init__(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.include = [_glob_regex(p) for p in include if p.strip()]
        self.exclude = [_glob_regex(p) for p in exclude if p.strip()]

    def excludes(self, rel: str) -> bool:
        return any(r.match(rel) for r in self.exclude)

    def accepts(self, rel: str) -> bool:
        if self.excludes(rel):
            return False
        return not self.include or any(r.match(rel) for r in self.include)


def entry_for(r: Response, d: Described) -> dict[str, Any]:
    """What a crawl keeps of an answered address (JSON-ready)."""
    return {
        "etag": r.etag,
        "last_modified": r.last_modified,
        "kind": d.kind,
        "suffix": d.suffix,
        "content_type": r.content_type,
        "charset": r.charset,
        "hash": hashlib.sha256(r.body).hexdigest(),
        "size": len(r.body),
        "links": d.links,
        "sitemaps": d.sitemaps,
        "canonical": d.canonical,
        "noindex": d.noindex,
        "fetched_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class BodyCache:
    """Bodies of changed pages, on disk from the crawl until they are parsed, within
    :data:`CACHE_BUDGET`. Each is checked against its hash when it is taken, so what an
    interrupted ingest left behind serves the next one (its crawl then answers 304)."""

    def __init__(self, folder: Path, budget: int = CACHE_BUDGET) -> None:
        self.folder = folder
        self.budget = budget
        self._lock = threading.Lock()
        folder.mkdir(parents=True, exist_ok=True)
        self._used = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())

    def _path(self, url: str) -> Path:
        return self.folder / hashlib.sha256(url.encode()).hexdigest()[:40]

    def put(self, url: str, body: bytes) -> None:
        with self._lock:
            if self._used + len(body) > self.budget:
                return
            self._used += len(body)
        self._path(url).write_bytes(body)

    def drop(self, url: str) -> None:
        self._path(url).unlink(missing_ok=True)

    def keep_only(self, urls: Iterable[str]) -> None:
        """Remove every body but those of ``urls`` (the pages still to be parsed)."""
        wanted = {self._path(u).name for u in urls}
        for f in self.folder.iterdir():
            if f.name not in wanted:
                f.unlink(missing_ok=True)

    def take(self, url: str) -> bytes | None:
        path = self._path(url)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        path.unlink(missing_ok=True)
        return data


@dataclass(frozen=True, slots=True)
class Page:
    """A page the crawl reached that is to be indexed under ``id`` (its canonical address
    when that lies in the crawl, else the address that answered: ``url``)."""

    id: str
    url: str
    entry: dict[str, Any]


@dataclass
class _Visit:
    url: str
    error: FetchError | None = None
    final: str = ""
    entry: dict[str, Any] = field(default_factory=dict)
    redirects: tuple[str, ...] = ()


_Todo = tuple[str, int, bool]  # address, depth, may be a sitemap


class Crawl:
    """One crawl (see the module docstring). :meth:`run` yields what it finds; afterwards
    :attr:`pages` holds the entries to keep, and :attr:`kept`, :attr:`gone`,
    :attr:`incomplete` and :attr:`truncated` what :meth:`WebSource.covers` needs."""

    def __init__(
        self,
        *,
        starts: Sequence[str],
        scopes: Sequence[Scope],
        patterns: Patterns,
        depth: int,
        max_pages: int,
        fetcher: Fetcher,
        robots: Robots,
        saved: dict[str, dict[str, Any]],
        cache: BodyCache,
    ) -> None:
        self.starts = list(dict.fromkeys(starts))
        self._start_set = frozenset(self.starts)
        #: The start pages' scopes, and the scope of where a start page redirects to.
        self.scopes = tuple(scopes)
        self.patterns = patterns
        self.depth = depth
        self.max_pages = max_pages
        self.fetcher = fetcher
        self.robots = robots
        self.saved = saved
        self.cache = cache
        #: Entries of the addresses this crawl reached (or kept from the last one).
        self.pages: dict[str, dict[str, Any]] = {}
        #: Ids and addresses that could not be read this time: what was indexed stays.
        self.kept: set[str] = set()
        #: Addresses known to have no page now (404, forbidden, not to be indexed).
        self.gone: set[str] = set()
        #: Scopes this crawl could not walk (their start page or robots.txt unreadable).
        self.incomplete: set[Scope] = set()
        #: Addresses left unfetched by --max-pages.
        self.truncated = 0
        self._queued: set[str] = set()
        self._claimed: set[str] = set()
        self._settled: set[str] = set()  # addresses that answered (after redirects)
        self._fetches = 0
        self._sitemaps = 0
        self._unreadable: set[str] = set()  # origins whose robots.txt could not be read

    # --- addresses ---------------------------------------------------------------------

    def scope_of(self, url: str) -> Scope | None:
        """The narrowest scope ``url`` lies in, or ``None``."""
        found = [s for s in self.scopes if s.relative(url) is not None]
        return max(found, key=lambda s: len(s.prefix)) if found else None

    def relative(self, url: str) -> str | None:
        scope = self.scope_of(url)
        return None if scope is None else scope.relative(url)

    def _page_id(self, url: str, canonical: str | None) -> str:
        if canonical and canonical != url:
            rel = self.relative(canonical)
            if rel is not None and not self.patterns.excludes(rel):
                return canonical
        return url

    def _check_start_hop(self, url: str) -> None:
        """A start page may redirect anywhere (``http`` to ``https``, ``/docs`` to
        ``/docs/``): the crawl then spans where it leads too."""
        self.robots.check(url)

    def check_hop(self, url: str) -> None:
        """Raise :class:`FetchError` for an address a redirect must not lead to: outside
        the crawl, excluded, or forbidden by ``robots.txt``."""
        rel = self.relative(url)
        if rel is None or self.patterns.excludes(rel):
            raise FetchError(f"redirects out of the crawl, to {url}", gone=True)
        self.robots.check(url)

    def _validators(self, url: str) -> Validators | None:
        entry = self.saved.get(url)
        if not entry or "hash" not in entry:
            return None
        return Validators(entry.get("etag"), entry.get("last_modified"))

    def _stored(self, url: str) -> tuple[str, dict[str, Any]] | None:
        """The last crawl's entry for ``url`` (through a redirect it recorded)."""
        entry = self.saved.get(url)
        if entry and "location" in entry:
            url, entry = entry["location"], self.saved.get(entry["location"])
        return (url, entry) if entry and "hash" in entry else None

    # --- the walk ----------------------------------------------------------------------

    def run(self) -> Iterator[Page | Failure | Skipped]:
        level: list[_Todo] = [(u, 0, True) for u in self.starts]
        self._queued.update(self.starts)
        window = max(1, self.fetcher.connections * 2)
        unfetched: list[str] = []
        with ThreadPoolExecutor(self.fetcher.connections, thread_name_prefix="rag-web") as pool:
            while level:
                following: list[_Todo] = []
                for at in range(0, len(level), window):
                    todo: list[_Todo] = []
                    for item in level[at : at + window]:
                        admitted = yield from self._admit(item, unfetched)
                        if admitted:
                            todo.append(item)
                    futures = [pool.submit(self._visit, u, sitemap) for u, _, sitemap in todo]
                    for (_, depth, _), future in zip(todo, futures, strict=True):
                        yield from self._settle(future.result(), depth, following)
                level = following
        if unfetched:
            self.truncated = len(unfetched)
            more = f" and {len(unfetched) - 1} more addresses" if len(unfetched) > 1 else ""
            yield Skipped(
                unfetched[0],
                f"not fetched: the crawl stopped at --max-pages {self.max_pages}; this{more} "
                "were left out, and nothing indexed from this site is removed this time",
            )

    def _admit(self, item: _Todo, unfetched: list[str]) -> Generator[Failure | Skipped, None, bool]:
        """Whether to fetch ``item`` now; yields what it reports about it."""
        url, _, sitemap = item
        if url in self._claimed or url in self._settled:  # reached already
            return False
        suffix = url_suffix(url)
        if suffix in NOT_DOCUMENTS and not sitemap:  # a sitemap may be gzipped
            yield Skipped(url, f"unsupported file type {suffix!r}; not fetched")
            return False
        origin = origin_of(url)
        if origin in self._unreadable:
            return False
        try:
            self.robots.check(url)
        except FetchError as e:
            if e.gone:
                self.gone.add(url)
                yield Skipped(url, e.reason)
            else:
                self._unreadable.add(origin)
                self.incomplete.update(s for s in self.scopes if s.origin == origin)
                yield Failure(
                    origin + "/robots.txt",
                    f"{e.reason}: nothing is fetched from {origin} this time, and nothing "
                    "indexed from it is removed",
                )
            return False
        if sitemap and url not in self.starts:
            self._sitemaps += 1
            if self._sitemaps > MAX_SITEMAPS:
                yield Skipped(url, f"not read: more than {MAX_SITEMAPS} sitemaps")
                return False
        if self._fetches >= self.max_pages:
            unfetched.append(url)
            return False
        self._fetches += 1
        return True

    def _visit(self, url: str, sitemap: bool) -> _Visit:
        """Fetch ``url`` (in a pool thread) and describe what came back."""
        check = self._check_start_hop if url in self._start_set else self.check_hop
        try:
            r = self.fetcher.get(url, validators=self._validators, check=check)
        except FetchError as e:
            return _Visit(url, e)
        if r.status == 304:
            entry = self.saved.get(r.url)
            if not entry or "hash" not in entry:
                return _Visit(
                    url, FetchError("HTTP 304 Not Modified to a request that was not conditional")
                )
            entry = dict(entry)
            entry["etag"] = r.etag or entry.get("etag")
            entry["last_modified"] = r.last_modified or entry.get("last_modified")
            return _Visit(url, None, r.url, entry, r.redirects)
        try:
            described = describe(r, sitemap_ok=sitemap, max_bytes=self.fetcher.max_bytes)
        except IngestError as e:
            return _Visit(url, FetchError(str(e)))
        except Exception as e:  # a page that breaks the parser must not stop the crawl
            return _Visit(url, FetchError(f"could not read the page: {short_message(e)}"))
        entry = entry_for(r, described)
        saved = self.saved.get(r.url) or {}
        if described.kind in ("html", "document") and saved.get("hash") != entry["hash"]:
            self.cache.put(r.url, r.body)
        return _Visit(url, None, r.url, entry, r.redirects)

    def _follow(self, links: list[str], depth: int, sitemap: bool, into: list[_Todo]) -> None:
        if depth > self.depth and not sitemap:
            return
        for link in links:
            if link in self._queued:
                continue
            rel = self.relative(link)
            if rel is not None and not self.patterns.excludes(rel):
                self._queued.add(link)
                into.append((link, depth, sitemap))

    def _follow_entry(self, entry: dict[str, Any], depth: int, into: list[_Todo]) -> None:
        """Queue what an entry leads to: a sitemap's pages at its own depth, a page's links
        one deeper."""
        if entry.get("kind") == "sitemap":
            self._follow(entry.get("sitemaps", []), depth, True, into)
            self._follow(entry.get("links", []), depth, False, into)
        else:
            self._follow(entry.get("links", []), depth + 1, False, into)

    def _settle(
        self, v: _Visit, depth: int, following: list[_Todo]
    ) -> Iterator[Page | Failure | Skipped]:
        if v.error is not None:
            if v.error.gone:
                self.gone.add(v.url)
                yield Skipped(v.url, v.error.reason)
                return
            yield Failure(v.url, v.error.reason)
            self.kept.add(v.url)
            stored = self._stored(v.url)
            if stored is None:
                if depth == 0 and (scope := self.scope_of(v.url)) is not None:
                    self.incomplete.add(scope)
                return
            final, entry = stored
            self.kept.update({final, self._page_id(final, entry.get("canonical"))})
            self.pages[final] = entry
            if final != v.url:
                self.pages[v.url] = {"location": final}
            self._follow_entry(entry, depth, following)
            return
        final, entry = v.final, v.entry
        if v.url in self._start_set and final != v.url:
            scope = Scope.of(final)
            if scope not in self.scopes:
                self.scopes = (*self.scopes, scope)
        self._queued.update((*v.redirects, final))
        for hop in v.redirects[:-1]:
            self.pages[hop] = {"location": final}
        if final in self._settled:
            return  # a redirect to a page read already
        self._settled.add(final)
        self.pages[final] = entry
        self._follow_entry(entry, depth, following)
        page = self._page(final, entry)
        if isinstance(page, Page):
            yield page
            return
        self.cache.drop(final)
        if page is not None:
            yield page

    def _page(self, final: str, entry: dict[str, Any]) -> Page | Skipped | None:
        """The page to index from an answer, a notice why there is none, or ``None`` (a
        sitemap, a second address of a page, a page outside --include)."""
        if entry["kind"] == "sitemap":
            return None
        if entry["kind"] not in ("html", "document"):
            self.gone.add(final)
            shown = entry.get("content_type") or "none given"
            return Skipped(final, f"unsupported content type ({shown})")
        if entry.get("noindex"):
            self.gone.add(final)
            return Skipped(final, "the page asks not to be indexed (robots noindex)")
        page_id = self._page_id(final, entry.get("canonical"))
        if page_id in self._claimed:
            return None  # the same page under another address
        self._claimed.add(page_id)
        rel = self.relative(page_id)
        if rel is not None and self.patterns.accepts(rel):
            return Page(page_id, final, entry)
        return None
