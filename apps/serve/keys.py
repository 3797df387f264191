"""The API keys of ``rag serve``, and ``rag keys`` (create, list, revoke).

A key is ``rk-<id>-<secret>``: ``<id>`` (12 hex digits) names it in lists, logs and
``rag keys revoke``; ``<secret>`` (``secrets.token_urlsafe(32)``, 256 random bits) is shown
once, when the key is created, and only its SHA-256 is kept. A fast hash is enough for a
secret that high in entropy (nothing to brute-force, unlike a password), and it lets every
request be checked in microseconds; digests are compared with ``hmac.compare_digest``.

The keys live in ``<data dir>/serve/keys.sqlite`` (mode 0600, its folder 0700). SQLite
rather than a JSON file because the server and ``rag keys`` use the file at the same
time: each change is one transaction, and the server reads the key at every request, so
a key revoked while the server runs is refused from its next request on, with no restart
and no reload race. The journal SQLite writes beside it takes the database's permissions.

This module needs nothing beyond the standard library: ``rag keys`` works without the
``serve`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from rag.commands import (
    Command,
    add_collection_options,
    emit,
    printable,
    settings_from_args,
    wants_json,
)
from rag.errors import ConfigError

#: The scopes a key may hold: ``read`` (search, ask, embeddings, list collections) and
#: ``ingest`` (add and remove documents).
SCOPES = ("read", "ingest")
#: Every token starts with this.
TOKEN_PREFIX = "rk-"

_ID = re.compile(r"^[0-9a-f]{12}$")
#: A token longer than this is not one of ours; refused before hashing anything.
_MAX_TOKEN = 128
_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    hash        TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    collections TEXT,
    created     REAL NOT NULL,
    revoked     REAL,
    rate        REAL
)
"""
_COLUMNS = "id, name, hash, scopes, collections, created, revoked, rate"


class UnknownKeyError(ConfigError):
    """No key has that id."""


@dataclass(frozen=True)
class KeyInfo:
    """A key as stored, without its secret: its id and name, its scopes, the collections it
    may use (``None``: all), when it was created and revoked (seconds since the epoch), and
    its rate limit in requests per minute (``None``: the server's default)."""

    id: str
    name: str
    scopes: frozenset[str]
    collections: frozenset[str] | None
    created: float
    revoked: float | None = None
    rate: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": sorted(self.scopes),
            "collections": None if self.collections is None else sorted(self.collections),
            "created": self.created,
            "revoked": self.revoked,
            "rate": self.rate,
            "active": self.active,
        }


def key_store_path(data_dir: Path | str) -> Path:
    """Where the keys of the server over ``data_dir`` are kept."""
    return Path(data_dir) / "serve" / "keys.sqlite"


def open_key_store(data_dir: Path | str) -> KeyStore | None:
    """The key store of the server over ``data_dir`` when it holds at least one active key,
    else ``None``. ``rag serve`` decides with it, once, at startup: with keys, every request
    must bring one (keys created or revoked later count at once); without, the server is
    keyless and loopback-only, and the first key created takes effect at its next start."""
    store = KeyStore(key_store_path(data_dir))
    return store if store.has_active() else None


class KeyStore:
    """The API keys in one SQLite file (see the module's docstring). Safe to share between
    threads and processes: every call opens its own connection. The file is created by the
    first :meth:`create`; reading a store that does not exist yet finds no keys."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # --- changes ---

    def create(
        self,
        name: str,
        *,
        scopes: Iterable[str] = ("read",),
        collections: Iterable[str] | None = None,
        rate: float | None = None,
    ) -> tuple[KeyInfo, str]:
        """A new key and its token, which is returned here and never again."""
        name = name.strip()
        if not name or len(name) > 100:
            raise ConfigError("a key needs a name of 1 to 100 characters (--name)")
        scope_set = frozenset(scopes)
        if not scope_set:
            raise ConfigError(f"a key needs at least one scope: {', '.join(SCOPES)}")
        for scope in sorted(scope_set):
            if scope not in SCOPES:
                raise ConfigError(f"unknown scope {scope!r}: choose from {', '.join(SCOPES)}")
        collection_set = None if collections is None else frozenset(collections)
        if collection_set is not None and not all(c.strip() for c in collection_set):
            raise ConfigError("a collection name may not be empty (--collection)")
        if collection_set == frozenset():
            collection_set = None  # no --collection: all of them
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ConfigError(
                f"--rate must be a positive number of requests per minute, not {rate}"
            )
        key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
        info = KeyInfo(
            id=key_id,
            name=name,
            scopes=scope_set,
            collections=collection_set,
            created=time.time(),
            rate=rate,
        )
        with self._connect(create=True) as db:
            assert db is not None
            db.execute(
                f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.id,
                    info.name,
                    _digest(secret),
                    json.dumps(sorted(info.scopes)),
                    None if collection_set is None else json.dumps(sorted(collection_set)),
                    info.created,
                    None,
                    rate,
                ),
            )
        return info, f"{TOKEN_PREFIX}{key_id}-{secret}"

    def revoke(self, key_id: str) -> KeyInfo:
        """Revokes the key (at once, for a running server too); revoking it again changes
        nothing. Raises :class:`UnknownKeyError` for an id no key has."""
        with self._connect(create=False) as db:
            if db is not None:
                db.execute(
                    "UPDATE keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                    (time.time(), key_id),
                )
        info = self.get(key_id)
        if info is None:
            raise UnknownKeyError(
                f"no API key has the id {printable(key_id)!r} (rag keys list shows them)"
            )
        return info

    # --- reading ---

    def get(self, key_id: str) -> KeyInfo | None:
        row = self._row(key_id)
        return None if row is None else _info(row)

    def list(self) -> list[KeyInfo]:
        """Every key, revoked ones included, oldest first."""
        with self._connect(create=False) as db:
            if db is None:
                return []
            rows = db.execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created, id").fetchall()
        return [_info(r) for r in rows]

    def has_active(self) -> bool:
        """Whether at least one key is not revoked."""
        with self._connect(create=False) as db:
            if db is None:
                return False
            return (
                db.execute("SELECT 1 FROM keys WHERE revoked IS NULL LIMIT 1").fetchone()
                is not None
            )

    def verify(self, token: str) -> KeyInfo | None:
        """The active key ``token`` belongs to; ``None`` for a malformed, unknown or revoked
        token, or a wrong secret."""
        key_id, secret = parse_token(token)
        if key_id is None or secret is None:
            return None
        row = self._row(key_id)
        # Hash and compare even for an unknown id, so that timing tells nothing.
        stored = row[2] if row is not None else "0" * 64
        if not hmac.compare_digest(_digest(secret), stored) or row is None:
            return None
        info = _info(row)
        return info if info.active else None

    # --- the file ---

    def _row(self, key_id: str) -> tuple | None:
        if not _ID.match(key_id):
            return None
        with self._connect(create=False) as db:
            if db is None:
                return None
            return db.execute(f"SELECT {_COLUMNS} FROM keys WHERE id = ?", (key_id,)).fetchone()

    @contextlib.contextmanager
    def _connect(self, *, create: bool) -> Iterator[sqlite3.Connection | None]:
        """A connection in a transaction (committed when the block ends without an error),
        or ``None`` when the file does not exist and ``create`` is false."""
        if not self.path.exists():
            if not create:
                yield None
                return
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Created 0600 before SQLite opens it: the hashes are nobody else's business.
            with contextlib.suppress(FileExistsError):
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            db = sqlite3.connect(self.path, timeout=10.0)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the key store {self.path}: {e}") from e
        try:
            with db:
                db.execute(_SCHEMA)
                yield db
        except sqlite3.DatabaseError as e:
            raise ConfigError(f"the key store {self.path} failed: {e}") from e
        finally:
            db.close()


def parse_token(token: str) -> tuple[str | None, str | None]:
    """``(id, secret)`` of a well-formed token, else ``(None, None)``."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > _MAX_TOKEN:
        return None, None
    key_id, sep, secret = token[len(TOKEN_PREFIX) :].partition("-")
    if not sep or not _ID.match(key_id) or not secret:
        return None, None
    return key_id, secret


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: tuple) -> KeyInfo:
    key_id, name, _hash, scopes, collections, created, revoked, rate = row
    return KeyInfo(
        id=key_id,
        name=name,
        scopes=frozenset(json.loads(scopes)),
        collections=None if collections is None else frozenset(json.loads(collections)),
        created=created,
        revoked=revoked,
        rate=rate,
    )


# --- rag keys ----------------------------------------------------------------------------------

_WARNING = (
    "Store this token now: it is shown only this once, and only its hash is kept. "
    "Clients send it as 'Authorization: Bearer <token>'."
)


def _configure(p: argparse.ArgumentParser) -> None:
    actions = p.add_subparsers(dest="keys_action", required=True, metavar="ACTION")
    c = actions.add_parser("create", help="create a key and print its token (once)")
    add_collection_options(c, collection=False, store=False)
    c.add_argument("--name", required=True, help="who or what the key is for")
    c.add_argument(
        "--scope",
        action="append",
        choices=SCOPES,
        default=None,
        help="read (search, ask, embeddings) or ingest (add and remove documents); "
        "repeatable (default: read)",
    )
    c.add_argument(
        "--collection",
        dest="key_collections",
        action="append",
        default=None,
        metavar="NAME",
        help="a collection the key may use; repeatable (default: all)",
    )
    c.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="PER_MINUTE",
        help="requests per minute for this key (default: the server's --rate)",
    )
    ls = actions.add_parser("list", help="list the keys (never their tokens)")
    add_collection_options(ls, collection=False, store=False)
    r = actions.add_parser("revoke", help="revoke a key, at once for a running server too")
    add_collection_options(r, collection=False, store=False)
    r.add_argument("key_id", metavar="ID", help="the key's id, as rag keys list shows it")


def _run(args: argparse.Namespace) -> int:
    store = KeyStore(key_store_path(settings_from_args(args).data_dir))
    if args.keys_action == "create":
        info, token = store.create(
            args.name,
            scopes=args.scope or ("read",),
            collections=args.key_collections,
            rate=args.rate,
        )
        if wants_json(args):
            emit({"key": info.to_json(), "token": token, "warning": _WARNING})
            return 0
        # The token alone on stdout (TOKEN=$(rag keys create ...)), the rest on stderr.
        print(f"created the key {info.id} ({_describe(info)})", file=sys.stderr)
        print(_WARNING, file=sys.stderr)
        print(token)
        return 0
    if args.keys_action == "revoke":
        info = store.revoke(args.key_id)
        if wants_json(args):
            emit({"revoked": info.to_json()})
        else:
            print(f"revoked the key {info.id} ({printable(info.name)})")
        return 0
    keys = store.list()
    if wants_json(args):
        emit({"keys": [k.to_json() for k in keys]})
        return 0
    if not keys:
        print("no API keys: rag keys create --name NAME")
    for k in keys:
        state = "active" if k.active else "revoked " + _when(k.revoked or 0)
        print(f"{k.id}  {_describe(k)}  created {_when(k.created)}  {state}")
    return 0


def _describe(k: KeyInfo) -> str:
    cols = "all collections" if k.collections is None else ", ".join(sorted(k.collections))
    rate = "default rate" if k.rate is None else f"{k.rate:g}/min"
    return printable(f"{k.name}: {'+'.join(sorted(k.scopes))}; {cols}; {rate}")


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


command = Command(help="manage the API keys of rag serve", configure=_configure, run=_run)
