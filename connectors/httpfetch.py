"""HTTP for the web source: polite, bounded GET requests, conditional when they can be.

:class:`Fetcher` wraps one httpx client with a bounded pool of connections. Every request
waits its turn on a per-host clock (:class:`Pacer`: ``rate`` requests a second, slower when
``robots.txt`` asks for a ``Crawl-delay``), sends the validators it is given
(``If-None-Match``, ``If-Modified-Since``), follows at most :data:`MAX_REDIRECTS` redirects
(each hop checked by the caller: a redirect out of the crawl is not followed), stops reading
a body past ``max_bytes`` and gives up after ``timeout`` seconds. :class:`Robots` reads each
host's ``robots.txt`` once per crawl, conditionally too, and answers whether a URL may be
fetched (RFC 9309: a missing ``robots.txt`` allows everything, one that cannot be read
forbids everything).

Addresses are compared as :func:`normalize` spells them (the ids of the web source).

Everything that goes wrong is a :class:`FetchError` whose reason a user can act on, and
which says whether the address has no page now (``gone``: 404, 410, forbidden by
``robots.txt``, redirected away) or could not be read this time (what was indexed from it
stays).
"""

from __future__ import annotations

import threading
import time
import urllib.robotparser
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from connectors.filesystem import human_size

if TYPE_CHECKING:
    import httpx

#: The token ``robots.txt`` rules are matched against, and the start of the User-Agent.
ROBOTS_AGENT = "ragkit"
USER_AGENT = f"{ROBOTS_AGENT}/0.1 (web source; honours robots.txt)"
#: Redirects followed from one address before giving up.
MAX_REDIRECTS = 5
#: The largest robots.txt read (RFC 9309 asks crawlers to parse at least 500 KiB); a larger
#: one counts as unreadable.
ROBOTS_MAX_BYTES = 2 * 2**20
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_ACCEPT = "text/html,application/xhtml+xml,application/pdf;q=0.9,*/*;q=0.8"


class FetchError(Exception):
    """Why an address gave no page. ``gone``: it has none now (the server says 404 or 410,
    ``robots.txt`` forbids it, it redirects out of the crawl), so what was indexed from it
    may go; otherwise it could not be read this time, and what was indexed stays."""

    def __init__(self, reason: str, *, gone: bool = False, status: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.gone = gone
        #: The HTTP status that said so (0: none did).
        self.status = status


@dataclass(frozen=True, slots=True)
class Validators:
    """What makes a request conditional: the ``ETag`` and ``Last-Modified`` last seen."""

    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True, slots=True)
class Response:
    """A 200 (with its body) or a 304 (without), after any redirects."""

    #: The address that answered: the one asked for, or where its redirects led.
    url: str
    status: int
    #: The media type, lower case, without parameters ("" when the server sent none).
    content_type: str
    charset: str | None
    etag: str | None
    last_modified: str | None
    #: ``X-Robots-Tag``, lower case ("" when absent).
    robots_tag: str
    body: bytes
    #: The addresses passed through, the one asked for first (empty without redirects).
    redirects: tuple[str, ...] = ()


_SAFE_PATH = "/%:@!$&'()*+,;=-._~"


def normalize(url: str) -> str | None:
    """``url`` in one spelling: scheme and host lower case, default port, user name and
    fragment dropped, dot segments resolved, unsafe characters percent-encoded, an empty
    path ``/``. ``None`` when it is not an http(s) address."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in ("http", "https") or not host:
        return None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != (443 if scheme == "https" else 80):
        netloc += f":{port}"
    path = quote(_remove_dots(parts.path or "/"), safe=_SAFE_PATH)
    query = quote(parts.query, safe=_SAFE_PATH + "?")
    return urlunsplit((scheme, netloc, path, query, ""))


def _remove_dots(path: str) -> str:
    out: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment != ".":
            out.append(segment)
    tail = "/" if path.endswith(("/.", "/..")) else ""
    return "/" + "/".join(out) + tail


def origin_of(url: str) -> str:
    """``https://host:port`` of ``url`` (as :func:`normalize` spells it)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Pacer:
    """A per-host clock: requests to one host start at least ``interval`` seconds apart."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._slowest: dict[str, float] = {}
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def slow_down(self, origin: str, interval: float) -> None:
        """Space requests to ``origin`` at least ``interval`` seconds (a Crawl-delay)."""
        with self._lock:
            self._slowest[origin] = max(interval, self._slowest.get(origin, 0.0))

    def wait(self, origin: str) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next.get(origin, now))
            self._next[origin] = start + max(self.interval, self._slowest.get(origin, 0.0))
        if start > now:
            time.sleep(start - now)


class Fetcher:
    """GET requests over one bounded httpx client; see the module docstring."""

    def __init__(self, *, rate: float, connections: int, timeout: float, max_bytes: int) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.connections = connections
        self.pacer = Pacer(1.0 / rate)
        self._client: httpx.Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(
                    headers={"User-Agent": USER_AGENT, "Accept": _ACCEPT},
                    timeout=httpx.Timeout(self.timeout),
                    limits=httpx.Limits(
                        max_connections=self.connections,
                        max_keepalive_connections=self.connections,
                    ),
                    follow_redirects=False,
                )
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def get(
        self,
        url: str,
        *,
        validators: Callable[[str], Validators | None] = lambda _: None,
        check: Callable[[str], None] = lambda _: None,
        max_bytes: int | None = None,
    ) -> Response:
        """GET ``url``, following redirects. ``validators(u)`` gives those to send to each
        address ``u`` on the way; ``check(u)`` raises :class:`FetchError` for an address
        a redirect must not lead to (it is not called for ``url`` itself)."""
        chain = [url]
        current = url
        while True:
            got = self._request(current, validators(current), max_bytes or self.max_bytes)
            if isinstance(got, Response):
                redirects = tuple(chain) if len(chain) > 1 else ()
                return _with_redirects(got, redirects)
            target = got
            if target in chain:
                shown = " -> ".join([*chain[chain.index(target) :], target])
                raise FetchError(f"redirect loop: {shown}")
            if len(chain) > MAX_REDIRECTS:
                raise FetchError(f"more than {MAX_REDIRECTS} redirects (last to {target})")
            check(target)
            chain.append(target)
            current = target

    def _request(self, url: str, validators: Validators | None, cap: int) -> Response | str:
        """One request: a :class:`Response`, or the address a redirect points to."""
        import httpx

        headers = {}
        if validators is not None and validators.etag:
            headers["If-None-Match"] = validators.etag
        if validators is not None and validators.last_modified:
            headers["If-Modified-Since"] = validators.last_modified
        client = self.client  # built before the clock starts
        self.pacer.wait(origin_of(url))
        deadline = time.monotonic() + self.timeout
        try:
            with client.stream("GET", url, headers=headers) as r:
                status = r.status_code
                if status in _REDIRECTS:
                    location = r.headers.get("location", "").strip()
                    if not location:
                        raise FetchError(f"HTTP {status} redirect without a Location")
                    return _redirect_target(url, location)
                if status == 304:
                    return _response(url, r, b"")
                if status != 200:
                    phrase = f" {r.reason_phrase}" if r.reason_phrase else ""
                    raise FetchError(
                        f"HTTP {status}{phrase}", gone=status in (404, 410), status=status
                    )
                declared = r.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > cap:
                    raise FetchError(_too_large(cap, int(declared)))
                body = bytearray()
                for part in r.iter_bytes():
                    body += part
                    if len(body) > cap:
                        raise FetchError(_too_large(cap, None))
                    if time.monotonic() > deadline:
                        raise FetchError(f"timed out after {self.timeout:g} s")
                return _response(url, r, bytes(body))
        except httpx.TimeoutException as e:
            raise FetchError(f"timed out after {self.timeout:g} s") from e
        except (httpx.HTTPError, httpx.InvalidURL, ValueError) as e:  # ValueError: bad IDNA
            raise FetchError(_transport_reason(e)) from e


def _redirect_target(url: str, location: str) -> str:
    target = normalize(urljoin(url, location))
    if target is None:
        raise FetchError(f"redirects to {location[:200]!r}, which is not an http(s) address")
    return target


def _response(url: str, r: Any, body: bytes) -> Response:
    media, _, params = r.headers.get("content-type", "").partition(";")
    charset = None
    for param in params.split(";"):
        key, _, value = param.strip().partition("=")
        if key.lower() == "charset" and value.strip(" \"'"):
            charset = value.strip(" \"'")
    return Response(
        url=url,
        status=r.status_code,
        content_type=media.strip().lower(),
        charset=charset,
        etag=r.headers.get("etag"),
        last_modified=r.headers.get("last-modified"),
        robots_tag=r.headers.get("x-robots-tag", "").lower(),
        body=body,
    )


def _with_redirects(r: Response, redirects: tuple[str, ...]) -> Response:
    if not redirects:
        return r
    from dataclasses import replace

    return replace(r, redirects=redirects)


def _too_large(cap: int, size: int | None) -> str:
    if size is None:
        return f"larger than the {human_size(cap)} limit"
    return f"larger than the {human_size(cap)} limit ({human_size(size)})"


def _transport_reason(e: Exception) -> str:
    import httpx

    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, httpx.ConnectError):
        return f"could not connect: {message}"
    if isinstance(e, httpx.DecodingError):
        return f"could not decode the response: {message}"
    return f"{type(e).__name__}: {message}"[:200]


# ---------------------------------------------------------------------------------------
# robots.txt


@dataclass
class _Rules:
    parser: urllib.robotparser.RobotFileParser | None  # None: everything is allowed
    #: Set when robots.txt could not be read: nothing on the host may be fetched.
    unreadable: str | None = None


class Robots:
    """Each host's ``robots.txt``, read once per crawl (conditionally, with what ``saved``
    holds from the last one: ``{origin: {"etag", "last_modified", "body"}}``, which this
    updates)."""

    def __init__(self, fetcher: Fetcher, saved: dict[str, dict[str, Any]]) -> None:
        self.fetcher = fetcher
        self.saved = saved
        self._rules: dict[str, _Rules] = {}
        self._lock = threading.Lock()

    def check(self, url: str) -> None:
        """Raise :class:`FetchError` unless ``url`` may be fetched: ``gone`` when
        ``robots.txt`` forbids it, not ``gone`` when ``robots.txt`` could not be read."""
        origin = origin_of(url)
        rules = self.rules(origin)
        if rules.unreadable is not None:
            raise FetchError(rules.unreadable)
        if rules.parser is not None and not rules.parser.can_fetch(ROBOTS_AGENT, url):
            raise FetchError("forbidden by robots.txt", gone=True)

    def rules(self, origin: str) -> _Rules:
        with self._lock:  # one reading per host, however many threads ask
            if origin not in self._rules:
                self._rules[origin] = self._read(origin)
            return self._rules[origin]

    def _read(self, origin: str) -> _Rules:
        url = origin + "/robots.txt"
        saved = self.saved.get(origin) or {}
        known = Validators(saved.get("etag"), saved.get("last_modified"))
        try:
            r = self.fetcher.get(
                url,
                validators=lambda u: known if u == url and "body" in saved else None,
                check=lambda u: None,
                max_bytes=ROBOTS_MAX_BYTES,
            )
        except FetchError as e:
            if 400 <= e.status < 500:  # RFC 9309: unavailable, so there are no rules
                self.saved.pop(origin, None)
                return _Rules(None)
            return _Rules(None, unreadable=f"{url} could not be read ({e.reason})")
        if r.status == 304:
            body = str(saved.get("body", ""))
        else:
            body = r.body.decode("utf-8", "replace")
            self.saved[origin] = {"etag": r.etag, "last_modified": r.last_modified, "body": body}
        parser = urllib.robotparser.RobotFileParser(url)
        parser.parse(body.splitlines())
        delay = parser.crawl_delay(ROBOTS_AGENT)
        rate = parser.request_rate(ROBOTS_AGENT)
        interval = float(delay) if delay else 0.0
        if rate is not None and rate.requests:
            interval = max(interval, rate.seconds / rate.requests)
        if interval > 0:
            self.fetcher.pacer.slow_down(origin, interval)
        return _Rules(parser)
