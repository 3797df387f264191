"""``rag serve``'s defences, against the real app (``create_app``) over loopback: API keys
(401), scopes and collections (403), the rate limit (429), the body limit (413), the bind
check (a public address needs keys), the gateway options of ``rag serve``, and a
property-based run of Schemathesis over the app's own ``/openapi.json``."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from apps.serve.gateway import GatewayConfig, check_bind
from apps.serve.keys import KeyStore, key_store_path, open_key_store
from rag import Settings, open_collection
from rag.errors import ConfigError
from tests.serve_support import free_port, running
from tests.serve_support import hashing_settings as rag_settings

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
RAG = str(Path(sys.executable).parent / "rag")
MODEL = "ragkit/docs"
#: Every wait on the server is bounded by this many seconds.
WAIT = 30.0
BODY_LIMIT = 16 << 10
QUESTION = "What is the default chunk size?"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``docs`` (the repository's data/) and ``notes`` (one file)."""
    root = tmp_path_factory.mktemp("security")
    notes = root / "notes"
    notes.mkdir()
    (notes / "llamas.md").write_text("# Llamas\n\nLlamas live in the Andes and eat grass.\n")
    with open_collection(rag_settings(root / "rag", collection="docs"), create=True) as col:
        col.ingest([DATA])
    with open_collection(rag_settings(root / "rag", collection="notes"), create=True) as col:
        col.ingest([notes])
    return root / "rag"


@pytest.fixture(scope="module")
def tokens(data_dir: Path) -> dict[str, str]:
    store = KeyStore(key_store_path(data_dir))
    out = {}
    _, out["reader"] = store.create("reader", scopes=["read"])
    _, out["docs_only"] = store.create("docs only", scopes=["read"], collections=["docs"])
    _, out["ingest_only"] = store.create("ingest only", scopes=["ingest"])
    _, out["limited"] = store.create("two a minute", scopes=["read"], rate=2)
    _, out["full"] = store.create("everything", scopes=["read", "ingest"])
    info, out["revoked"] = store.create("revoked", scopes=["read", "ingest"])
    store.revoke(info.id)
    return out


@pytest.fixture(scope="module")
def base_url(data_dir: Path, tokens: dict[str, str]) -> Iterator[str]:
    from apps.serve.app import create_app

    app = create_app(
        rag_settings(data_dir),
        keys=KeyStore(key_store_path(data_dir)),
        # No server-wide rate: the "limited" key brings its own.
        gateway_config=GatewayConfig(rate_per_minute=None, max_body_bytes=BODY_LIMIT),
    )
    with running(app) as url:
        yield url


def call(base_url: str, route: tuple[str, str, dict | None], token: str | None) -> httpx.Response:
    method, path, body = route
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    return httpx.request(method, base_url + path, json=body, headers=headers, timeout=WAIT)


def error_code(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "code"}
    return error["code"]


def routes(model: str = MODEL) -> list[tuple[str, str, dict | None]]:
    return [
        ("GET", "/v1/models", None),
        ("POST", "/v1/search", {"model": model, "query": "chunk size"}),
        ("POST", "/v1/chat/completions", {"model": model, "messages": [user(QUESTION)]}),
        ("POST", "/v1/embeddings", {"model": model, "input": "chunk size"}),
    ]


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


# --- keys, scopes, collections -------------------------------------------------------------------


@pytest.mark.parametrize("route", routes(), ids=lambda r: r[1])
def test_no_key_or_a_wrong_one_is_401(
    base_url: str, tokens: dict[str, str], route: tuple[str, str, dict | None]
) -> None:
    missing = call(base_url, route, None)
    assert error_code(missing, 401) == "missing_api_key"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for wrong in ("rk-000000000000-" + "x" * 43, tokens["reader"][:-2] + "zz", tokens["revoked"]):
        r = call(base_url, route, wrong)
        assert error_code(r, 401) == "invalid_api_key"
        assert wrong not in r.text
    assert call(base_url, route, tokens["reader"]).status_code == 200  # the same request, keyed


@pytest.mark.parametrize("route", routes(), ids=lambda r: r[1])
def test_a_key_without_the_read_scope_is_403(
    base_url: str, tokens: dict[str, str], route: tuple[str, str, dict | None]
) -> None:
    assert error_code(call(base_url, route, tokens["ingest_only"]), 403) == "scope_not_allowed"


def test_a_key_sees_only_its_collections(base_url: str, tokens: dict[str, str]) -> None:
    docs_only = tokens["docs_only"]
    for route in routes("ragkit/notes")[1:]:
        r = call(base_url, route, docs_only)
        assert error_code(r, 403) == "collection_not_allowed", route
        assert call(base_url, route, tokens["reader"]).status_code == 200, route
    for route in routes(MODEL)[1:]:
        assert call(base_url, route, docs_only).status_code == 200, route
    listed = call(base_url, routes()[0], docs_only).json()["data"]
    assert [m["id"] for m in listed] == [MODEL]
    everything = call(base_url, routes()[0], tokens["reader"]).json()["data"]
    assert {m["id"] for m in everything} >= {MODEL, "ragkit/notes"}


def test_over_its_rate_a_key_gets_429_with_retry_after(
    base_url: str, tokens: dict[str, str]
) -> None:
    # Two a minute: a bucket of 2, then one every 30 s.
    answers = [call(base_url, routes()[0], tokens["limited"]) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 429]
    assert error_code(answers[2], 429) == "rate_limit_exceeded"
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 30
    assert call(base_url, routes()[0], tokens["reader"]).status_code == 200  # its own bucket


def test_an_oversized_body_is_413_before_the_key_is_asked_for(
    base_url: str, tokens: dict[str, str]
) -> None:
    big = ("POST", "/v1/search", {"model": MODEL, "query": "x" * (BODY_LIMIT + 1)})
    for token in (None, tokens["reader"]):
        assert error_code(call(base_url, big, token), 413) == "body_too_large"
    just_under = ("POST", "/v1/search", {"model": MODEL, "query": "chunk " * 2000})
    assert call(base_url, just_under, tokens["reader"]).status_code == 200


# --- the bind check and the command's options ------------------------------------------------


def test_a_public_bind_without_keys_is_refused_before_binding(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(RAG, "serve", "--data-dir", str(tmp_path / "rag"), "--host", "0.0.0.0"),
            *("--port", str(free_port()), "--generator", "extractive"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "refusing to serve on '0.0.0.0' without API keys" in done.stderr
    assert "rag keys create" in done.stderr
    assert "rag serve: http" not in done.stdout


def test_the_bind_check_allows_loopback_and_keyed_servers(
    data_dir: Path, tokens: dict[str, str], tmp_path: Path
) -> None:
    keys = open_key_store(data_dir)
    assert keys is not None
    for host in ("0.0.0.0", "::", "192.0.2.7", "example.com"):
        with pytest.raises(ConfigError, match="without API keys"):
            check_bind(host, None)
        check_bind(host, keys)
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        check_bind(host, None)
    assert open_key_store(tmp_path) is None  # no key: keyless, hence loopback only


class Captured(Exception):
    """Stops ``rag serve`` where it would build the app, before anything binds."""


@pytest.fixture
def serve_args(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Runs ``rag serve ARGS`` in process up to ``create_app``: what it would be given."""
    from apps.cli import main

    seen: dict[str, Any] = {}

    def create_app(settings: Settings, **kw: Any) -> Any:
        seen.update(kw, settings=settings)
        raise Captured

    monkeypatch.setattr("apps.serve.app.create_app", create_app)

    def run(*args: str) -> dict[str, Any]:
        seen.clear()
        status = main(["serve", "--generator", "extractive", *args])
        assert status == 1 and seen, status  # stopped at create_app (Captured)
        return dict(seen)

    return run


def test_each_gateway_option_reaches_the_gateway_config(
    serve_args: Any, data_dir: Path, tokens: dict[str, str]
) -> None:
    seen = serve_args(
        *("--data-dir", str(data_dir), "--host", "0.0.0.0"),
        *("--rate-per-minute", "30", "--burst", "7"),
        *("--max-body-mb", "0.5", "--max-upload-mb", "3"),
        *("--max-in-flight", "3", "--max-queued", "0", "--timeout", "9.5"),
    )
    assert seen["gateway_config"] == GatewayConfig(
        rate_per_minute=30.0,
        burst=7,
        max_body_bytes=512 << 10,
        max_upload_bytes=3 << 20,
        max_in_flight=3,
        max_queued=0,
        timeout=9.5,
    )
    # A public address with keys gets as far as building the app, with its host and keys.
    assert seen["host"] == "0.0.0.0" and seen["keys"] is not None
    assert seen["settings"].data_dir == data_dir


def test_the_gateway_defaults_are_gateway_configs_and_zero_is_no_rate(
    serve_args: Any, tmp_path: Path
) -> None:
    from apps.cli import build_parser
    from apps.serve.command import gateway_config

    assert serve_args("--data-dir", str(tmp_path))["gateway_config"] == GatewayConfig()
    assert serve_args("--rate-per-minute", "0")["gateway_config"].rate_per_minute is None
    _, subparsers = build_parser()
    help_text = subparsers["serve"].format_help()
    for option in ("--rate-per-minute", "--burst", "--max-body-mb", "--max-upload-mb"):
        assert option in help_text
    for option in ("--max-in-flight", "--max-queued", "--timeout"):
        assert option in help_text
    assert help_text.count("(default ") >= 10
    defaults = subparsers["serve"].parse_args([])
    assert gateway_config(defaults) == GatewayConfig()
    # Every field a user can set is an option (the rest are not limits).
    settable = {f.name for f in dataclasses.fields(GatewayConfig)}
    assert settable - {"busy_retry_after", "exempt"} == {
        "rate_per_minute",
        "burst",
        "max_body_bytes",
        "max_upload_bytes",
        "max_in_flight",
        "max_queued",
        "timeout",
    }


def test_the_batching_options_reach_the_service(serve_args: Any, tmp_path: Path) -> None:
    from apps.serve.batching import BatchConfig

    seen = serve_args("--data-dir", str(tmp_path))
    assert seen["batching"] == BatchConfig()
    seen = serve_args("--data-dir", str(tmp_path), "--batch-max", "4", "--batch-wait-ms", "2.5")
    assert seen["batching"] == BatchConfig(max_batch=4, max_wait_ms=2.5)
    assert not serve_args("--data-dir", str(tmp_path), "--no-batching")["batching"].enabled
    with pytest.raises(ConfigError):
        BatchConfig(max_batch=0)
    assert main_status("serve", "--batch-max", "0") == 2


def main_status(*args: str) -> int:
    from apps.cli import main

    return main(list(args))


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--rate-per-minute", "-1", "--rate-per-minute must be 0 (no limit) or more"),
        ("--burst", "0", "--burst must be more than 0"),
        ("--max-body-mb", "0", "--max-body-mb must be more than 0"),
        ("--max-upload-mb", "nan", "--max-upload-mb must be more than 0"),
        ("--max-in-flight", "0", "--max-in-flight must be more than 0"),
        ("--max-queued", "-1", "--max-queued must be 0 or more"),
        ("--timeout", "inf", "--timeout must be more than 0"),
    ],
)
def test_a_gateway_option_out_of_range_names_itself(option: str, value: str, message: str) -> None:
    from apps.cli import build_parser
    from apps.serve.command import gateway_config

    _, subparsers = build_parser()
    args: argparse.Namespace = subparsers["serve"].parse_args([option, value])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        gateway_config(args)


# --- Schemathesis over /openapi.json -------------------------------------------------------------

OPERATIONS = [
    "GET /v1/models",
    "GET /v1/models/{model}",
    "POST /v1/search",
    "POST /v1/embeddings",
    "POST /v1/chat/completions",
    "POST /v1/collections/{name}/documents",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
]
#: Examples per operation: enough to cross every branch of the request models, few enough
#: for the whole run to take seconds.
EXAMPLES = 40


def _check(name: str) -> Any:
    return getattr(schemathesis.checks, name)


#: No 500; every status, content type, header and body as the schema declares; data the
#: schema rules out refused with a 4xx. Not ``positive_data_acceptance``: some requests the
#: schema admits are rightly refused with a 400 for rules JSON Schema cannot state (the last
#: message must be a non-empty one from the user, ``where`` must parse as ragkit's filter
#: language), so it would fail on correct answers.
CHECKS = [
    _check(name)
    for name in (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    )
]


@pytest.fixture(scope="module")
def api_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json")


def test_every_operation_is_fuzzed(api_schema: Any) -> None:
    labels = {result.ok().label for result in api_schema.get_all_operations()}
    assert labels == set(OPERATIONS)


def _on_the_collection(case: Any) -> Any:
    """A schema-valid case aimed at the collection that exists (a random model name is
    mostly a 404), and a chat that ends with a question, so that the answers are searched
    and written, not only refused."""
    if "model" in (case.path_parameters or {}):
        case.path_parameters["model"] = MODEL
    if isinstance(case.body, dict):
        if "model" in case.body:
            case.body["model"] = MODEL
        messages = case.body.get("messages")
        if isinstance(messages, list) and len(messages) < 512:
            messages.append(user(QUESTION))
    return case


@pytest.mark.parametrize("label", OPERATIONS)
def test_schemathesis_finds_nothing(api_schema: Any, tokens: dict[str, str], label: str) -> None:
    operation = api_schema.find_operation_by_label(label)
    assert operation is not None, label
    positive = operation.as_strategy(GenerationMode.POSITIVE)
    cases = st.one_of(
        positive.map(_on_the_collection), positive, operation.as_strategy(GenerationMode.NEGATIVE)
    )
    auth = {"Authorization": f"Bearer {tokens['full']}"}
    statuses: set[int] = set()

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same requests every run
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def fuzz(case: Any) -> None:
        response = case.call_and_validate(headers=auth, checks=CHECKS, timeout=WAIT)
        statuses.add(response.status_code)

    fuzz()
    assert 500 not in statuses and statuses  # (a 500 already failed not_a_server_error)
    if "{" in label or label.startswith("POST"):
        assert 200 in statuses and statuses & {400, 404}, statuses  # both sides were reached
