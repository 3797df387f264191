"""The web source against a site served on loopback by the test itself.

:class:`Site` serves resources from a dict on 127.0.0.1 (a free port), answers conditional
requests with 304, and logs every request (path, whether it was conditional, status), the
requests in flight at once, and the bytes it sent of a streamed body. Nothing leaves
loopback: the one address off the site (``http://elsewhere.invalid/``) must never be asked.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from connectors.crawl import Scope
from connectors.httpfetch import normalize
from connectors.web import WebSource
from rag.collection import open_collection
from rag.config import Settings
from rag.errors import ConfigError
from rag.source import Source, SourceItem, SourceOptions, open_source, pick_source
from rag.types import Failure, Skipped
from tests.fixtures_docs import pdf_bytes

# ---------------------------------------------------------------------------------------
# The site


@dataclass
class Resource:
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    status: int = 200
    location: str = ""
    #: "etag", "last-modified" or "" (no validator: never a 304).
    validator: str = "etag"
    modified: str = "Wed, 01 Jan 2025 00:00:00 GMT"
    delay: float = 0.0
    #: Sent without a Content-Length, in pieces, until the client stops reading.
    stream: bool = False


@dataclass(frozen=True)
class Request:
    path: str
    conditional: bool
    status: int
    at: float


@dataclass
class Site:
    resources: dict[str, Resource] = field(default_factory=dict)
    log: list[Request] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    most_in_flight: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        site = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                with site._lock:
                    site.in_flight += 1
                    site.most_in_flight = max(site.most_in_flight, site.in_flight)
                done = threading.Event()
                try:
                    site._answer(self, done)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    if not done.is_set():
                        site._done()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def url(self, path: str) -> str:
        return self.base + path

    def page(self, path: str, html: str, **kw: Any) -> None:
        self.resources[path] = Resource(html.encode(), **kw)

    def requests(self) -> list[Request]:
        with self._lock:
            out, self.log = self.log, []
        return out

    def _done(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler, done: threading.Event) -> None:
        """Answer one request. It stops counting as in flight just before its answer goes
        out, so a client that has its answer and asks again is never counted twice, and a
        client that stops reading a streamed body is not counted while this thread writes on
        (it learns of the close only on a later write)."""

        def last() -> None:
            self._done()
            done.set()

        res = self.resources.get(h.path)
        inm, ims = h.headers.get("If-None-Match"), h.headers.get("If-Modified-Since")
        status = 404 if res is None else res.status
        etag = '"' + hashlib.sha1(res.body).hexdigest()[:16] + '"' if res else ""
        if (
            res is not None
            and res.status == 200
            and (
                (res.validator == "etag" and inm == etag)
                or (res.validator == "last-modified" and ims == res.modified)
            )
        ):
            status = 304
        with self._lock:
            self.log.append(Request(h.path, bool(inm or ims), status, time.monotonic()))
        if res is not None and res.delay:
            time.sleep(res.delay)
        h.send_response(status)
        if res is None or status not in (200, 304):
            if res is not None and res.location:
                h.send_header("Location", res.location)
            h.send_header("Content-Length", "9")
            last()
            h.end_headers()
            h.wfile.write(b"no page\n\n")
            return
        if res.validator == "etag":
            h.send_header("ETag", etag)
        elif res.validator == "last-modified":
            h.send_header("Last-Modified", res.modified)
        if status == 304:
            last()
            h.end_headers()
            return
        h.send_header("Content-Type", res.content_type)
        if not res.stream:
            h.send_header("Content-Length", str(len(res.body)))
            last()
            h.end_headers()
            h.wfile.write(res.body)
            return
        last()
        h.end_headers()
        for at in range(0, len(res.body), 65536):
            h.wfile.write(res.body[at : at + 65536])
            self.sent[h.path] = at + 65536


def html(title: str, body: str, head: str = "") -> str:
    return (
        f"<!doctype html><html><head><title>{title}</title>{head}</head><body>"
        '<nav><a href="/">Navhome</a> <a href="/blog/">Navblog</a></nav>'
        f"<main>{body}</main><footer>Footcopyright notice of the example site</footer>"
        "</body></html>"
    )


def para(*words: str) -> str:
    """A paragraph long enough for the extractor to keep as main content."""
    return "<p>" + " ".join(words) + " " + "steady prose about the subject " * 8 + "</p>"


def build(site: Site) -> None:
    """A dozen pages under /docs/, and everything that can go wrong with a crawl."""
    site.resources["/robots.txt"] = Resource(
        b"User-agent: *\nDisallow: /docs/private/\n", "text/plain"
    )
    links = [
        "intro.html", "guide.html", "api.html", "faq.html", "a.html", "a-print.html",
        "private/secret.html", "missing.html", "broken.html", "slow.html", "huge.html",
        "manual.pdf", "old.html", "loop1.html", "logo.png", "http://elsewhere.invalid/x",
        "/outside/page.html", "mailto:someone@example.org", "#top",
    ]  # fmt: skip
    anchors = " ".join(f'<a href="{link}">{link}</a>' for link in links)
    site.page("/docs/", html("Docs home", "<h1>Welcome</h1>" + para("welcome zebra") + anchors))
    site.page(
        "/docs/intro.html",
        html("Intro", "<h1>Introduction</h1>" + para("introduction yak")),
        validator="last-modified",
    )
    site.page(
        "/docs/guide.html",
        html(
            "Guide",
            "<h1>Guide</h1><h2>Install</h2>" + para("install walrus") + "<h2>Use</h2>"
            '<a href="deep/one.html">deeper</a>' + para("usage walrus"),
        ),
        validator="last-modified",
    )
    site.page("/docs/api.html", html("API", "<h1>API</h1>" + para("api heron")))
    site.page("/docs/faq.html", html("FAQ", "<h1>FAQ</h1>" + para("faq otter")))
    canonical = '<link rel="canonical" href="/docs/a.html">'
    site.page("/docs/a.html", html("Page A", "<h1>A</h1>" + para("alpha lynx"), canonical))
    site.page(
        "/docs/a-print.html",
        html("Page A (print)", "<h1>A</h1>" + para("alpha lynx printed"), canonical),
    )
    site.page("/docs/private/secret.html", html("Secret", para("secret badger")))
    site.resources["/docs/broken.html"] = Resource(status=500)
    site.page("/docs/slow.html", html("Slow", para("slow sloth")), delay=3.0)
    site.resources["/docs/huge.html"] = Resource(b"<p>" + b"x" * (20 * 2**20), stream=True)
    site.resources["/docs/manual.pdf"] = Resource(
        pdf_bytes([["Manual page one about the gearbox"], ["Second page on torque"]]),
        "application/pdf",
    )
    site.resources["/docs/old.html"] = Resource(status=301, location="/docs/new.html")
    site.page("/docs/new.html", html("New", "<h1>New</h1>" + para("moved ibex")))
    site.resources["/docs/loop1.html"] = Resource(status=302, location="/docs/loop2.html")
    site.resources["/docs/loop2.html"] = Resource(status=302, location="loop1.html")
    site.page("/docs/deep/one.html", html("One", para("depth two gecko") + '<a href="two.html">'))
    site.page("/docs/deep/two.html", html("Two", para("depth three newt")))
    site.page("/outside/page.html", html("Outside", para("outside scope")))
    site.page("/docs/extra.html", html("Extra", "<h1>Extra</h1>" + para("only in the sitemap")))
    locs = "".join(
        f"<url><loc>{site.url(p)}</loc></url>" for p in ("/docs/extra.html", "/docs/api.html")
    )
    site.resources["/docs/sitemap.xml"] = Resource(
        f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        f"{locs}</urlset>".encode(),
        "application/xml",
    )


#: A high rate and short timeouts, so that each crawl takes about a second (the slow page).
FAST = {"rate": "1000", "timeout": "1", "connections": "4"}


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site()
    build(s)
    yield s
    s.close()


def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "rag",
        store="faiss",
        embed_model="hashing-384",
        embed_backend="hashing",
        chunk_size=64,
        chunk_overlap=8,
        max_file_mb=2,
    )


def ingest(tmp_path: Path, targets: list[str], **params: str) -> Any:
    with open_collection(settings(tmp_path), create=True) as col:
        return col.ingest(targets, source="web", params={**FAST, **params})


def stored(tmp_path: Path) -> dict[str, list[dict]]:
    """The chunks in the collection, by source: each chunk's text and metadata."""
    out: dict[str, list[dict]] = {}
    with open_collection(settings(tmp_path)) as col:
        for batch, _ in col.store.scan(batch_size=100):
            for c in batch:
                out.setdefault(c.source, []).append({"text": c.text, **c.metadata})
    return out


def paths(reports: list[Failure] | list[Skipped], site: Site) -> dict[str, str]:
    return {r.source.removeprefix(site.base): r.reason for r in reports}


# ---------------------------------------------------------------------------------------
# The crawl


def test_first_crawl_ingests_the_right_pages_and_reports_each_failure(
    site: Site, tmp_path: Path
) -> None:
    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    chunks = stored(tmp_path)
    assert sorted(s.removeprefix(site.base) for s in chunks) == [
        "/docs/",
        "/docs/a.html",  # a-print.html names it canonical: one page
        "/docs/api.html",
        "/docs/deep/one.html",  # depth 2; deep/two.html is depth 3
        "/docs/faq.html",
        "/docs/guide.html",
        "/docs/intro.html",
        "/docs/manual.pdf",
        "/docs/new.html",  # old.html redirects to it
    ]
    assert report.added == 9
    failed = paths(report.failed, site)
    assert set(failed) == {
        "/docs/broken.html",
        "/docs/slow.html",
        "/docs/huge.html",
        "/docs/loop1.html",
    }
    assert failed["/docs/broken.html"] == "HTTP 500 Internal Server Error"
    assert failed["/docs/slow.html"] == "timed out after 1 s"
    assert failed["/docs/huge.html"] == "larger than the 2.0 MB limit"
    assert failed["/docs/loop1.html"].startswith("redirect loop: ")
    assert "/docs/loop2.html" in failed["/docs/loop1.html"]
    skipped = paths(report.skipped, site)
    assert skipped == {
        "/docs/private/secret.html": "forbidden by robots.txt",
        "/docs/missing.html": "HTTP 404 Not Found",
        "/docs/logo.png": "unsupported file type '.png'; not fetched",
    }
    asked = [r.path for r in site.requests()]
    # Out of scope, forbidden, too deep or not a document: never asked for.
    for path in ("/docs/private/secret.html", "/outside/page.html", "/docs/deep/two.html"):
        assert path not in asked
    assert "/docs/logo.png" not in asked and "/x" not in asked
    assert len(asked) == len(set(asked)), "an address was fetched twice"
    # The 20 MB body was cut off near the limit, not read to its end.
    assert site.sent["/docs/huge.html"] < 12 * 2**20
    assert site.most_in_flight <= 4

    # Main content only: navigation and footer are gone; metadata as documented.
    texts = " ".join(c["text"] for cs in chunks.values() for c in cs)
    assert "zebra" in texts and "walrus" in texts and "gearbox" in texts
    assert "Navhome" not in texts and "Footcopyright" not in texts
    guide = chunks[site.url("/docs/guide.html")][0]
    assert guide["url"] == site.url("/docs/guide.html")
    assert guide["title"] == "Guide"
    assert guide["headings"] == "Guide | Install | Use"
    assert guide["last_modified"] == "2025-01-01T00:00:00+00:00"
    assert guide["fetched_at"].endswith("+00:00")
    assert guide["file_type"] == "html"
    page_a = chunks[site.url("/docs/a.html")]
    assert "printed" not in " ".join(c["text"] for c in page_a)  # a.html came first
    pdf = chunks[site.url("/docs/manual.pdf")]
    assert {c["page"] for c in pdf} == {1, 2}
    assert {c["file_type"] for c in pdf} == {"pdf"}


def test_second_crawl_asks_conditionally_and_embeds_nothing(site: Site, tmp_path: Path) -> None:
    ingest(tmp_path, [site.url("/docs/")], depth="2")
    # Answered 200 and were indexed (the slow and the huge page answered 200 too, then failed).
    failing = {"/docs/slow.html", "/docs/huge.html"}
    answered = {r.path for r in site.requests() if r.status == 200} - failing
    before = stored(tmp_path)

    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    second = site.requests()
    assert (report.added, report.updated, report.deleted) == (0, 0, 0)
    assert report.unchanged == 9
    assert report.embedded == 0 and report.chunks == 0
    again = [r for r in second if r.path in answered]
    assert {r.path for r in again} == answered
    assert len(again) == len(answered)
    for r in again:
        assert r.conditional, r
        assert r.status == 304, r
    # Nothing else was asked for but what failed, and the redirects (which carry no
    # validators) on the way to pages that answered 304.
    assert {r.path for r in second if r.path not in answered} == failing | {
        "/docs/broken.html",
        "/docs/loop1.html",
        "/docs/loop2.html",
        "/docs/old.html",
        "/docs/missing.html",
    }
    assert stored(tmp_path) == before


def test_changed_removed_and_failing_pages(site: Site, tmp_path: Path) -> None:
    ingest(tmp_path, [site.url("/docs/")], depth="2")
    del site.resources["/docs/faq.html"]  # still linked: 404
    index = site.resources["/docs/"]
    index.body = index.body.replace(b'<a href="intro.html">intro.html</a>', b"")  # unlinked
    guide = site.resources["/docs/guide.html"]
    guide.body = guide.body.replace(b"install walrus", b"install narwhal")
    guide.modified = "Thu, 02 Jan 2025 00:00:00 GMT"
    site.resources["/docs/api.html"].status = 503  # transient: stays
    site.requests()

    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    chunks = stored(tmp_path)
    assert report.deleted == 2
    assert site.url("/docs/faq.html") not in chunks
    assert site.url("/docs/intro.html") not in chunks
    assert site.url("/docs/api.html") in chunks
    assert paths(report.failed, site)["/docs/api.html"] == "HTTP 503 Service Unavailable"
    assert paths(report.skipped, site)["/docs/faq.html"] == "HTTP 404 Not Found"
    assert report.updated == 2  # the index page and the guide
    text = " ".join(c["text"] for c in chunks[site.url("/docs/guide.html")])
    assert "narwhal" in text and "walrus" in text and "install walrus" not in text
    assert chunks[site.url("/docs/guide.html")][0]["last_modified"].startswith("2025-01-02")
    assert "/docs/intro.html" not in [r.path for r in site.requests()]


def test_an_unreachable_start_page_or_robots_txt_removes_nothing(
    site: Site, tmp_path: Path
) -> None:
    ingest(tmp_path, [site.url("/docs/")], depth="2")
    count = sum(len(c) for c in stored(tmp_path).values())
    site.requests()
    site.resources["/robots.txt"].status = 503
    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    assert report.deleted == 0
    assert [f.source for f in report.failed] == [site.url("/robots.txt")]
    assert "could not be read (HTTP 503 Service Unavailable)" in report.failed[0].reason
    assert [r.path for r in site.requests()] == ["/robots.txt"]  # RFC 9309: nothing else

    site.resources["/robots.txt"].status = 200
    site.resources["/docs/"].status = 500
    (state,) = (tmp_path / "rag").rglob("sources/web/crawl.json")
    state.unlink()  # no links kept: the crawl cannot go past the start page
    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    assert report.deleted == 0
    assert [f.source for f in report.failed] == [site.url("/docs/")]
    assert sum(len(c) for c in stored(tmp_path).values()) == count


def test_a_sitemap_lists_the_start_pages(site: Site, tmp_path: Path) -> None:
    report = ingest(tmp_path, [site.url("/docs/sitemap.xml")], depth="0")
    assert sorted(s.removeprefix(site.base) for s in stored(tmp_path)) == [
        "/docs/api.html",
        "/docs/extra.html",
    ]
    assert report.failed == [] and report.skipped == []
    assert {r.path for r in site.requests()} == {
        "/robots.txt",
        "/docs/sitemap.xml",
        "/docs/api.html",
        "/docs/extra.html",
    }
    again = ingest(tmp_path, [site.url("/docs/sitemap.xml")], depth="0")
    assert again.unchanged == 2 and again.embedded == 0
    assert all(r.conditional and r.status == 304 for r in site.requests())


def test_a_file_of_addresses_reports_bad_lines(site: Site, tmp_path: Path) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text(
        f"# start pages\n{site.url('/docs/api.html')}\n\nftp://example.org/x\n"
        f"{site.url('/docs/extra.html')}\n"
    )
    report = ingest(tmp_path, [str(urls)], depth="0")
    assert sorted(s.removeprefix(site.base) for s in stored(tmp_path)) == [
        "/docs/api.html",
        "/docs/extra.html",
    ]
    assert [(f.source, f.reason) for f in report.failed] == [
        (f"{urls}:4", "not an http(s) address: 'ftp://example.org/x'")
    ]


def test_max_pages_stops_the_crawl_and_then_removes_nothing(site: Site, tmp_path: Path) -> None:
    ingest(tmp_path, [site.url("/docs/")], depth="2")
    site.requests()
    report = ingest(tmp_path, [site.url("/docs/")], depth="2", max_pages="3")
    pages = [r.path for r in site.requests() if r.path != "/robots.txt"]
    assert len(pages) == 3
    assert report.deleted == 0
    (notice,) = [s for s in report.skipped if "--max-pages 3" in s.reason]
    assert "more addresses were left out" in notice.reason
    assert len(stored(tmp_path)) == 9


def test_include_exclude_and_robots_meta(site: Site, tmp_path: Path) -> None:
    site.page(
        "/docs/api.html",
        html("API", para("api heron"), '<meta name="robots" content="noindex">'),
    )
    site.page(
        "/docs/guide.html",
        html("Guide", para("guide") + '<a href="deep/one.html">d</a>', '<meta name="robots" '
             'content="nofollow">'),
    )  # fmt: skip
    with open_collection(settings(tmp_path), create=True) as col:
        report = col.ingest(
            [site.url("/docs/")],
            source="web",
            include=["*.html"],
            exclude=["a.html", "a-*.html", "slow.html"],
            params={**FAST, "depth": "2"},
        )
    ids = sorted(s.removeprefix(site.base) for s in stored(tmp_path))
    # Not indexed: the index (outside --include), api.html (noindex), the PDF (include),
    # a.html (excluded); deep/one.html is linked only from guide.html, which says nofollow.
    assert ids == ["/docs/faq.html", "/docs/guide.html", "/docs/intro.html", "/docs/new.html"]
    assert paths(report.skipped, site)["/docs/api.html"].endswith("(robots noindex)")
    asked = {r.path for r in site.requests()}
    assert "/docs/" in asked  # fetched for its links
    assert not asked & {"/docs/a.html", "/docs/a-print.html", "/docs/slow.html"}
    assert "/docs/deep/one.html" not in asked


def test_rate_spaces_the_requests_to_one_host(site: Site, tmp_path: Path) -> None:
    ingest(tmp_path, [site.url("/docs/sitemap.xml")], depth="0", rate="5")
    log = site.requests()  # robots.txt, the sitemap, then its two pages at once
    assert [r.path for r in log[:2]] == ["/robots.txt", "/docs/sitemap.xml"]
    times = [r.at for r in log]
    # 0.2 s apart when they leave; on arrival, allow for a slow connection or two.
    assert len(times) == 4 and times[-1] - times[0] >= 0.45
    assert all(b - a >= 0.08 for a, b in itertools.pairwise(times))


def test_connections_bound_the_requests_in_flight(site: Site, tmp_path: Path) -> None:
    for path in ("/docs/a.html", "/docs/faq.html", "/docs/api.html", "/docs/intro.html"):
        site.resources[path].delay = 0.2
    ingest(tmp_path, [site.url("/docs/")], depth="1", connections="1", timeout="5")
    assert site.most_in_flight == 1


# ---------------------------------------------------------------------------------------
# The contract pieces


def test_load_fetches_again_a_body_no_longer_cached(site: Site, tmp_path: Path) -> None:
    state = tmp_path / "state"
    options = SourceOptions(
        targets=(site.url("/docs/api.html"),),
        params=(("depth", "0"), ("rate", "1000")),
        state_dir=str(state),
    )
    source = WebSource(options)
    (item,) = [i for i in source.scan() if isinstance(i, SourceItem)]
    for body in (state / "bodies").iterdir():
        body.unlink()  # as after a crash between the crawl and the parsing
    site.requests()
    (doc,) = source.load(item)
    assert "heron" in doc.text and doc.metadata["source"] == item.id
    assert [(r.path, r.conditional) for r in site.requests()] == [("/docs/api.html", False)]


def test_covers_is_the_scope_and_the_patterns(site: Site, tmp_path: Path) -> None:
    source = WebSource(
        SourceOptions(
            targets=(site.url("/docs/api.html"),),
            exclude=("drafts/**",),
            params=(("depth", "0"), ("rate", "1000")),
            state_dir=str(tmp_path / "state"),
        )
    )
    assert not source.covers(site.url("/docs/x.html"))  # no crawl yet: nothing is covered
    list(source.scan())
    assert source.covers(site.url("/docs/x.html"))
    assert source.covers(site.url("/docs/sub/y.pdf"))
    assert not source.covers(site.url("/docs/drafts/z.html"))
    assert not source.covers(site.url("/outside/page.html"))
    assert not source.covers("http://elsewhere.invalid/docs/x.html")
    assert not source.covers("/docs/x.html")


def test_options_are_checked_and_web_addresses_are_claimed(tmp_path: Path) -> None:
    def make(**params: str) -> WebSource:
        return WebSource(
            SourceOptions(targets=("https://example.org/",), params=tuple(params.items()))
        )

    for bad in ({"depth": "-1"}, {"depth": "two"}, {"rate": "0"}, {"timeout": "nan"},
                {"max_pages": "0"}, {"connections": "0"}):  # fmt: skip
        with pytest.raises(ConfigError):
            make(**bad)
    source = make(depth="1", max_pages="7", rate="3.5", connections="2", timeout="4")
    assert isinstance(source, Source)
    assert (source.depth, source.max_pages, source.rate) == (1, 7, 3.5)
    assert (source.connections, source.timeout) == (2, 4.0)
    with pytest.raises(ConfigError, match="takes no option colour"):
        open_source(
            "web", SourceOptions(targets=("https://example.org/",), params=(("colour", "1"),))
        )
    with pytest.raises(ConfigError, match="neither an http"):
        WebSource(SourceOptions(targets=(str(tmp_path / "nothing.txt"),)))
    assert pick_source(["https://example.org/", "http://example.org/a"]) == "web"
    assert pick_source([str(tmp_path)]) == "filesystem"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://Example.ORG:80/a/./b/../c.html#frag", "http://example.org/a/c.html"),
        ("https://example.org", "https://example.org/"),
        ("https://user:pw@example.org:8443/x y?q=1 2", "https://example.org:8443/x%20y?q=1%202"),
        ("https://example.org/%7Euser/", "https://example.org/%7Euser/"),
        ("ftp://example.org/", None),
        ("mailto:a@example.org", None),
        ("https://example.org:99999/", None),
    ],
)
def test_normalize(url: str, expected: str | None) -> None:
    assert normalize(url) == expected


def test_scope_is_the_host_and_the_folder() -> None:
    scope = Scope.of("https://example.org/docs/intro.html")
    assert scope.root == "https://example.org/docs/"
    assert scope.relative("https://example.org/docs/api/x.html?v=2") == "api/x.html?v=2"
    assert scope.relative("https://example.org/docsx/") is None
    assert scope.relative("http://example.org/docs/") is None


# ---------------------------------------------------------------------------------------
# The command line


def test_rag_ingest_picks_the_web_source_and_passes_its_flags(
    site: Site, hashing_env: dict[str, str]
) -> None:
    def rag(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "apps.cli", "ingest", *args, "--json"],
            env=hashing_env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = rag(site.url("/docs/"), "--depth", "0", "--rate", "1000", "--timeout", "1")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == 1  # depth 0: the start page only
    proc = rag(
        site.url("/docs/"), "--source-opt", "depth=1", "--max-pages", "4", "--rate", "1000",
        "--connections", "2", "--timeout", "1",
    )  # fmt: skip
    out = json.loads(proc.stdout)
    assert any("--max-pages 4" in s["reason"] for s in out["skipped"])
    assert out["deleted"] == 0
    bad = rag(site.url("/docs/"), "--depth", "deep")
    assert bad.returncode != 0
    assert "--depth takes a whole number, not 'deep'" in bad.stderr


def test_a_start_page_may_redirect_and_other_pages_stay_inside(site: Site, tmp_path: Path) -> None:
    site.resources["/go/docs"] = Resource(status=301, location="/docs/")
    site.resources["/docs/faq.html"] = Resource(status=302, location="/outside/page.html")
    report = ingest(tmp_path, [site.url("/go/docs")], depth="1")
    ids = {s.removeprefix(site.base) for s in stored(tmp_path)}
    assert {"/docs/", "/docs/intro.html", "/docs/new.html"} <= ids
    assert "/outside/page.html" not in ids and "/docs/faq.html" not in ids
    reason = paths(report.skipped, site)["/docs/faq.html"]
    assert reason == f"redirects out of the crawl, to {site.url('/outside/page.html')}"
    assert "/outside/page.html" not in {r.path for r in site.requests()}


def test_a_sitemap_index_and_a_gzipped_sitemap(site: Site, tmp_path: Path) -> None:
    import gzip

    plain = site.resources["/docs/sitemap.xml"].body
    site.resources["/docs/pages.xml.gz"] = Resource(gzip.compress(plain), "application/gzip")
    site.resources["/docs/index.xml"] = Resource(
        b'<?xml version="1.0"?><sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        + f"<sitemap><loc>{site.url('/docs/pages.xml.gz')}</loc></sitemap>".encode()
        + b"</sitemapindex>",
        "text/xml",
    )
    report = ingest(tmp_path, [site.url("/docs/index.xml")], depth="0")
    assert report.failed == [] and report.skipped == []
    assert sorted(s.removeprefix(site.base) for s in stored(tmp_path)) == [
        "/docs/api.html",
        "/docs/extra.html",
    ]


@pytest.mark.parametrize(("field", "expected"), [(None, "plain words"), ("note", "kestrel")])
def test_format_options_reach_the_parsers(
    site: Site, tmp_path: Path, field: str | None, expected: str
) -> None:
    records = [{"text": "plain words here", "note": "kestrel sighting at dawn"}]
    site.resources["/docs/data.json"] = Resource(json.dumps(records).encode(), "application/json")
    params = {"depth": "0"} if field is None else {"depth": "0", "json_field": field}
    report = ingest(tmp_path, [site.url("/docs/data.json")], **params)
    assert report.added == 1, report
    (chunks,) = stored(tmp_path).values()
    assert expected in chunks[0]["text"] and chunks[0]["file_type"] == "json"


def test_a_page_that_fails_still_leads_to_the_pages_it_linked(site: Site, tmp_path: Path) -> None:
    ingest(tmp_path, [site.url("/docs/")], depth="2")
    before = stored(tmp_path)
    site.resources["/docs/guide.html"].status = 500  # the only page linking deep/one.html
    site.requests()
    report = ingest(tmp_path, [site.url("/docs/")], depth="2")
    assert report.deleted == 0 and report.embedded == 0
    assert site.url("/docs/guide.html") in [f.source for f in report.failed]
    assert stored(tmp_path) == before
    deep = [r for r in site.requests() if r.path == "/docs/deep/one.html"]
    assert [(r.conditional, r.status) for r in deep] == [(True, 304)]
