"""The Chroma store's client for a Chroma server: its URL, its token, its timeouts, retries.

``config.url`` is ``http(s)://host[:port][?tenant=...&database=...]``. A server's token
comes only from the environment: ``CHROMA_AUTH_TOKEN``, sent as ``Authorization: Bearer``
(Chroma's own ``CHROMA_AUTH_TOKEN_TRANSPORT_HEADER=X-Chroma-Token`` switches the header).

chromadb's ``HttpClient`` keeps one pooled ``httpx`` client (keep-alive connections) but sets
no timeout and never retries. :func:`http_client` gives it a timeout (5 s to connect, 60 s
for a response) and runs each HTTP request again after a transient error (connection
refused or reset, a timeout, HTTP 5xx) with the backoff of
:data:`vectorstores.retry.SERVER_BACKOFF`; every request ragkit makes (get, query, count,
upsert, delete, create, drop) is safe to repeat. Both reach into the client's request
layer (``_server._make_request``, ``_server._session``), which chromadb offers no hook for:
:func:`http_client` checks that it is there and says so in the log when a chromadb
release moves it. A server still away after the retries surfaces as
:class:`vectorstores.retry.Unreachable`, which the store words as a StoreError.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from rag.errors import ConfigError
from vectorstores.retry import Unreachable, retry

log = logging.getLogger("vectorstores.chroma")

TOKEN_ENV = "CHROMA_AUTH_TOKEN"
CONNECT_TIMEOUT_S = 5.0
RESPONSE_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """Where a Chroma server listens, parsed from ``config.url``."""

    host: str
    port: int
    ssl: bool
    tenant: str | None = None
    database: str | None = None

    @property
    def url(self) -> str:
        """``http(s)://host:port``, for messages (a URL never carries credentials)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl else 'http'}://{host}:{self.port}"


def parse_url(url: str) -> ServerAddress:
    """``http(s)://host[:port][?tenant=...&database=...]``; the port defaults to 8000 for
    http and 443 for https. Credentials in the URL are refused: tokens come from the
    environment."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"chroma URL {url!r}: use http://host:port or https://host")
    if parts.username or parts.password:
        raise ConfigError(
            f"chroma URL {url!r} carries credentials; put the token in ${TOKEN_ENV} instead"
        )
    if not parts.hostname:
        raise ConfigError(f"chroma URL {url!r} has no host")
    if parts.path not in ("", "/") or parts.fragment:
        raise ConfigError(f"chroma URL {url!r}: a path is not supported, give only host and port")
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"chroma URL {url!r}: bad port") from e
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = set(query) - {"tenant", "database"}
    if unknown:
        raise ConfigError(
            f"chroma URL {url!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
            "known: tenant, database"
        )
    ssl = parts.scheme == "https"
    return ServerAddress(
        host=parts.hostname,
        port=port if port is not None else (443 if ssl else 8000),
        ssl=ssl,
        tenant=query["tenant"][-1] if "tenant" in query else None,
        database=query["database"][-1] if "database" in query else None,
    )


def transient(e: BaseException) -> bool:
    """Whether an error of the HTTP client may go away on its own: no connection, a
    timeout, a dropped connection, or an HTTP 5xx answer."""
    import httpx
    from chromadb.errors import ChromaError

    if isinstance(e, httpx.TransportError):  # connect/read/write errors and timeouts
        return True
    if isinstance(e, httpx.HTTPStatusError):
        return e.response.status_code >= 500
    if isinstance(e, ChromaError):
        return e.code() >= 500
    return False


def unreachable_message(address: ServerAddress, u: Unreachable) -> str:
    return (
        f"the Chroma server at {address.url} cannot be reached ({u.summary()}; is it "
        f"running, and listening there?): {type(u.error).__name__}: {u.error}"
    )


def http_client(address: ServerAddress) -> Any:
    """A chromadb ``HttpClient`` for ``address`` with timeouts and retries (see above)."""
    import chromadb
    from chromadb.config import Settings

    settings: dict[str, Any] = {"anonymized_telemetry": False, "allow_reset": False}
    token = os.environ.get(TOKEN_ENV)
    if token:
        settings["chroma_client_auth_provider"] = (
            "chromadb.auth.token_authn.TokenAuthClientProvider"
        )
        settings["chroma_client_auth_credentials"] = token
    tenant: dict[str, str] = {}
    if address.tenant is not None:
        tenant["tenant"] = address.tenant
    if address.database is not None:
        tenant["database"] = address.database

    def make() -> Any:
        # The client checks the tenant and database on the server as it is made.
        return chromadb.HttpClient(
            host=address.host,
            port=address.port,
            ssl=address.ssl,
            settings=Settings(**settings),
            **tenant,
        )

    def refused(e: BaseException) -> bool:
        # Making the client, chromadb words a failed connection as this ValueError.
        return transient(e) or (isinstance(e, ValueError) and "Could not connect" in str(e))

    client = retry(make, transient=refused, what=f"chroma server {address.url}")
    _harden(client, address)
    return client


def _harden(client: Any, address: ServerAddress) -> None:
    import httpx

    server = getattr(client, "_server", None)
    request = getattr(server, "_make_request", None)
    session = getattr(server, "_session", None)
    if request is None or not isinstance(session, httpx.Client):
        log.warning(
            "chroma: this chromadb release hides its HTTP layer; requests to %s go without "
            "ragkit's timeouts and retries",
            address.url,
        )
        return
    session.timeout = httpx.Timeout(RESPONSE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    what = f"chroma server {address.url}"

    def make_request(method: str, path: str, **kwargs: Any) -> Any:
        # chromadb pops "json" from its kwargs: each attempt gets its own copy.
        return retry(lambda: request(method, path, **dict(kwargs)), transient=transient, what=what)

    server._make_request = make_request
