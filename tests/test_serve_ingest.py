"""``POST /v1/collections/{name}/documents`` on the real app, over loopback with httpx's
multipart uploads: a file uploaded is searchable at once, sent again it is unchanged,
changed it is updated; a corrupt file is reported failed (not a 500); the key's scope and
collections apply; a file name cannot leave the upload folder; a second ingest of the same
collection is refused with 409. Collections use the hashing embedder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.serve.app import create_app
from apps.serve.gateway import GatewayConfig
from apps.serve.keys import KeyStore, key_store_path
from rag import open_collection
from tests.serve_support import hashing_settings as settings
from tests.serve_support import running

#: Every wait on the server is bounded by this many seconds.
WAIT = 30.0
LLAMAS = b"# Llamas\n\nLlamas live in the Andes mountains and eat grass all day long.\n"
ALPACAS = b"# Alpacas\n\nAlpacas are smaller than llamas and are shorn for their fleece.\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ingest") / "rag"


@pytest.fixture(scope="module")
def tokens(data_dir: Path) -> dict[str, str]:
    store = KeyStore(key_store_path(data_dir))
    out = {}
    _, out["writer"] = store.create("writer", scopes=["read", "ingest"])
    _, out["reader"] = store.create("reader", scopes=["read"])
    _, out["pets"] = store.create("pets only", scopes=["read", "ingest"], collections=["pets"])
    return out


@pytest.fixture(scope="module")
def base_url(data_dir: Path, tokens: dict[str, str]) -> Iterator[str]:
    app = create_app(
        settings(data_dir),
        keys=KeyStore(key_store_path(data_dir)),
        gateway_config=GatewayConfig(rate_per_minute=None, max_upload_bytes=256 << 10),
    )
    with running(app) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str, tokens: dict[str, str]) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {tokens['writer']}"}
    with httpx.Client(base_url=base_url, timeout=WAIT, headers=headers) as c:
        yield c


def upload(client: httpx.Client, collection: str, *files: tuple[str, bytes], **kw: Any) -> Any:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return client.post(f"/v1/collections/{collection}/documents", files=parts, **kw)


def report(r: httpx.Response) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    return r.json()


def search(client: httpx.Client, model: str, query: str) -> list[dict[str, Any]]:
    r = client.post("/v1/search", json={"model": model, "query": query, "k": 3})
    assert r.status_code == 200, r.text
    return r.json()["hits"]


def test_an_upload_is_searchable_then_unchanged_then_updated(
    client: httpx.Client, data_dir: Path
) -> None:
    first = report(upload(client, "animals", ("llamas.md", LLAMAS)))
    assert first["collection"] == "animals" and first["model"] == "ragkit/animals"
    assert first["store"] == "faiss" and first["saved"] == ["llamas.md"]
    assert (first["added"], first["updated"], first["unchanged"]) == (1, 0, 0)
    assert first["failed"] == [] and first["chunks"] >= 1
    saved = data_dir / "uploads" / "animals" / "llamas.md"
    assert saved.read_bytes() == LLAMAS
    # Searchable at once, through the server's own (already open) collection.
    hits = search(client, "ragkit/animals", "what do llamas eat")
    assert hits and hits[0]["source"] == str(saved.resolve())
    assert "grass" in hits[0]["text"]

    again = report(upload(client, "animals", ("llamas.md", LLAMAS)))
    assert (again["added"], again["updated"], again["unchanged"]) == (0, 0, 1)
    assert again["chunks"] == 0 and again["total_chunks"] == first["total_chunks"]

    changed = LLAMAS.replace(b"grass", b"hay and clover")
    updated = report(upload(client, "animals", ("llamas.md", changed), ("alpacas.md", ALPACAS)))
    assert (updated["added"], updated["updated"], updated["unchanged"]) == (1, 1, 0)
    hits = search(client, "ragkit/animals", "llamas eat hay and clover")
    assert "clover" in hits[0]["text"]
    assert all("grass all day" not in h["text"] for h in hits)
    models = client.get("/v1/models").json()["data"]
    assert "ragkit/animals" in [m["id"] for m in models]


def test_a_corrupt_file_is_reported_failed_and_not_kept(
    client: httpx.Client, data_dir: Path
) -> None:
    r = upload(client, "papers", ("broken.pdf", b"%PDF-1.7\nnot really a pdf"), ("ok.md", ALPACAS))
    out = report(r)
    assert out["added"] == 1 and out["saved"] == ["ok.md"]
    (failed,) = out["failed"]
    assert failed["path"].endswith("broken.pdf") and "PDF" in failed["reason"]
    assert not (data_dir / "uploads" / "papers" / "broken.pdf").exists()


def test_file_names_cannot_leave_the_upload_folder(client: httpx.Client, data_dir: Path) -> None:
    out = report(
        upload(
            client,
            "names",
            ("../../escape.md", LLAMAS),
            ("..\\..\\escape2.md", LLAMAS),
            ("/etc/cron.d/sub/evil.md", ALPACAS),
            (".hidden.md", ALPACAS),
            ("script.sh", b"echo hi"),
        )
    )
    reasons = {f["path"]: f["reason"] for f in out["failed"]}
    assert "must not contain '..'" in reasons["../../escape.md"]
    assert "must not contain '..'" in reasons["..\\..\\escape2.md"]
    assert "hidden" in reasons[".hidden.md"]
    assert "unsupported file type .sh" in reasons["script.sh"]
    # A path is reduced to its file name, inside the upload folder.
    assert out["saved"] == ["evil.md"] and out["added"] == 1
    folder = data_dir / "uploads" / "names"
    assert sorted(p.name for p in folder.iterdir()) == ["evil.md"]
    root = data_dir.parent
    assert not list(root.rglob("escape*")) and not (root / "evil.md").exists()


def test_only_refused_files_create_nothing(client: httpx.Client, data_dir: Path) -> None:
    out = report(upload(client, "empty", ("../x.md", LLAMAS)))
    assert out["model"] is None and out["saved"] == [] and len(out["failed"]) == 1
    assert "ragkit/empty" not in [m["id"] for m in client.get("/v1/models").json()["data"]]


def test_scope_and_collection_of_the_key_apply(
    base_url: str, tokens: dict[str, str], data_dir: Path
) -> None:
    def as_key(token: str | None, collection: str) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=base_url, timeout=WAIT, headers=headers) as c:
            return upload(c, collection, ("llamas.md", LLAMAS))

    assert as_key(None, "pets").status_code == 401
    read_only = as_key(tokens["reader"], "pets")
    assert read_only.status_code == 403
    assert read_only.json()["error"]["code"] == "scope_not_allowed"
    elsewhere = as_key(tokens["pets"], "wild")
    assert elsewhere.status_code == 403
    assert elsewhere.json()["error"]["code"] == "collection_not_allowed"
    assert not (data_dir / "uploads" / "pets").exists()
    assert not (data_dir / "uploads" / "wild").exists()
    assert report(as_key(tokens["pets"], "pets"))["added"] == 1


def test_a_second_ingest_of_the_collection_is_409(client: httpx.Client, data_dir: Path) -> None:
    report(upload(client, "busy", ("llamas.md", LLAMAS)))
    # What another process's ingest holds (rag ingest): the collection's write lock.
    with open_collection(settings(data_dir).with_(collection="busy")) as col, col.lock():
        r = upload(client, "busy", ("alpacas.md", ALPACAS))
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "ingest_in_progress"
    assert not (data_dir / "uploads" / "busy" / "alpacas.md").exists()
    assert report(upload(client, "busy", ("alpacas.md", ALPACAS)))["added"] == 1


def test_malformed_uploads_are_400_and_oversized_ones_413(client: httpx.Client) -> None:
    url = "/v1/collections/animals/documents"
    cases = [
        client.post(url, json={"files": []}),
        client.post(url, files=[("other", ("a.md", b"x"))]),
        client.post(url, data={"files": "not a file"}, files=[("files", ("a.md", b"x"))]),
        client.post(url, content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}),
    ]
    for r in cases:
        assert r.status_code == 400, r.text
        assert set(r.json()["error"]) == {"message", "type", "code"}
    one = [("files", ("a.md", b"x"))]
    bad_name = client.post("/v1/collections/-up/documents", files=one)
    assert bad_name.status_code == 400 and "path.name" in bad_name.json()["error"]["message"]
    assert client.post("/v1/collections/..%2Fup/documents", files=one).status_code == 404
    big = upload(client, "animals", ("big.md", b"x" * (300 << 10)))
    assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"


def test_the_upload_is_declared_in_the_openapi_schema(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    op = schema["paths"]["/v1/collections/{name}/documents"]["post"]
    body = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["required"] == ["files"] and body["properties"]["files"]["type"] == "array"
    assert {"200", "400", "401", "403", "409", "413", "429"} <= set(op["responses"])
    assert "422" not in op["responses"]
    ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    fields = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]
    assert {"added", "updated", "unchanged", "failed", "saved", "model"} <= set(fields)
