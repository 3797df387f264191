"""The generator router (rag.routing): rules pick a generator per question, private passages
never leave the machine, and a broken routes file names its line.

The cloud endpoint is a real HTTP server on loopback (tests/chat_server.py) that records
every request, so "nothing was sent" is checked on what it received."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag import Settings, open_collection
from rag.errors import ConfigError, RouteRefused
from rag.routing import Router, find_routes
from tests.chat_server import ChatServer

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_Q = "What is the salary of the chief llama keeper?"
PUBLIC_Q = "Where do llamas live and what do they eat all day?"


@pytest.fixture(autouse=True)
def _no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    # The routes file alone decides where requests go.
    for var in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "RAG_ROUTES", "RAG_GENERATOR"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory holding one private and one public Markdown file, ingested."""
    root = tmp_path_factory.mktemp("routing")
    docs = root / "docs"
    (docs / "private").mkdir(parents=True)
    (docs / "public").mkdir()
    (docs / "private" / "salaries.md").write_text(
        "# Salaries\n\nThe salary of the chief llama keeper is forty thousand coins per year.\n"
    )
    (docs / "public" / "llamas.md").write_text(
        "# Llamas\n\nLlamas live in the Andes mountains and eat grass all day long.\n"
    )
    with open_collection(settings(root / "data"), create=True) as col:
        col.ingest([docs])
    return root / "data"


def settings(data_dir: Path, **kw: object) -> Settings:
    kw.setdefault("k", 1)
    return Settings(data_dir=data_dir, embed_model="hashing-64", embed_backend="hashing", **kw)


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer(reply="From the cloud [1].", models=["cloud-model"]) as s:
        yield s


def cloud(server: ChatServer, **extra: str) -> str:
    lines = [
        "[generators.cloud]",
        'kind = "openai"',
        f'base_url = "{server.base_url}"',
        'model = "cloud-model"',
    ]
    lines += [f'{k} = "{v}"' for k, v in extra.items()]
    return "\n".join(lines) + "\n"


QUOTES = '[generators.quotes]\nkind = "extractive"\n'
PRIVACY_RULE = '[[rules]]\nsource = "*/private/*"\nlocal_only = true\ngenerator = "quotes"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "routes.toml"
    path.write_text(text)
    return path


def ask(data_dir: Path, routes: Path, question: str, **kw: object):
    with open_collection(settings(data_dir, routes=routes)) as col:
        return col.ask(question, **kw)


# --- privacy ----------------------------------------------------------------------------------


def test_private_passages_go_to_the_local_generator_and_nothing_is_sent(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(tmp_path, 'default = "cloud"\n' + cloud(server) + QUOTES + PRIVACY_RULE)
    result = ask(corpus, routes, PRIVATE_Q)
    assert result.sources[0].chunk.source.endswith("private/salaries.md")
    assert result.generator == "extractive"
    assert result.route == "quotes"
    assert result.route_reason == (
        "rule 1 (routes.toml line 8) matched (source */private/*, local_only); 1 private passage"
    )
    assert server.requests == []  # not a chat request, not even a model listing


def test_private_passages_reach_the_in_process_model_and_nothing_is_sent(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    """The same privacy rule with the real local model (SmolLM2 in process) as its route."""
    pytest.importorskip("xllamacpp")
    routes = write(
        tmp_path,
        'default = "cloud"\n'
        + cloud(server)
        + '[generators.here]\nkind = "local"\n'
        + '[[rules]]\nsource = "*/private/*"\nlocal_only = true\ngenerator = "here"\n',
    )
    result = ask(corpus, routes, PRIVATE_Q)
    assert result.generator == "local" and result.route == "here"
    assert "forty thousand coins" in result.text and result.citations == [1]
    assert server.requests == []


def test_a_public_question_goes_to_the_endpoint(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(tmp_path, 'default = "cloud"\n' + cloud(server) + QUOTES + PRIVACY_RULE)
    result = ask(corpus, routes, PUBLIC_Q)
    assert result.sources[0].chunk.source.endswith("public/llamas.md")
    assert result.route == "cloud" and "default" in result.route_reason
    assert result.text == "From the cloud [1]."
    (request,) = server.chat_requests
    assert request.body is not None and request.body["model"] == "cloud-model"
    assert "Andes" in json.dumps(request.messages)
    assert "salary" not in json.dumps(request.messages)


def test_private_passages_without_a_local_generator_are_refused(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    # A privacy rule without a generator only marks passages private.
    routes = write(
        tmp_path,
        'default = "cloud"\n' + cloud(server) + '[[rules]]\nsource = "*/private/*"\n'
        "local_only = true\n",
    )
    with pytest.raises(RouteRefused, match=r"nothing was sent") as e:
        ask(corpus, routes, PRIVATE_Q)
    assert "salaries.md" in str(e.value) and "'cloud'" in str(e.value)
    assert server.requests == []
    # The public question still goes out.
    assert ask(corpus, routes, PUBLIC_Q).route == "cloud"
    assert len(server.chat_requests) == 1


def test_an_earlier_rule_that_picks_the_endpoint_is_refused_on_private_passages(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "quotes"\n'
        + cloud(server)
        + QUOTES
        + '[[rules]]\nmin_words = 1\ngenerator = "cloud"\n'
        + PRIVACY_RULE,
    )
    with pytest.raises(RouteRefused, match="rule 2"):
        ask(corpus, routes, PRIVATE_Q)
    assert server.requests == []


def test_a_self_hosted_endpoint_marked_local_may_answer_private_passages(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n'
        + cloud(server)
        + "local = true\n"
        + '[[rules]]\nsource = "*/private/*"\nlocal_only = true\ngenerator = "cloud"\n',
    )
    assert ask(corpus, routes, PRIVATE_Q).route == "cloud"
    assert len(server.chat_requests) == 1


def test_history_is_not_sent_to_an_endpoint_that_is_not_local(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(tmp_path, 'default = "cloud"\n' + cloud(server) + QUOTES + PRIVACY_RULE)
    history = [("secret question", "The salary is forty thousand coins [1].")]
    result = ask(corpus, routes, PUBLIC_Q, history=history)
    assert result.route == "cloud"
    (request,) = server.chat_requests
    assert "forty thousand" not in json.dumps(request.messages)


def test_a_routes_key_from_its_own_variable_goes_to_its_own_endpoint(
    corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ChatServer(reply="Keyed [1].", models=["cloud-model"], api_key="sk-route") as server:
        routes = write(tmp_path, 'default = "cloud"\n' + cloud(server, api_key_env="ROUTE_KEY"))
        monkeypatch.setenv("ROUTE_KEY", "sk-route")
        assert ask(corpus, routes, PUBLIC_Q).text == "Keyed [1]."
        (request,) = server.chat_requests
        assert request.headers.get("authorization") == "Bearer sk-route"


# --- rules ------------------------------------------------------------------------------------


def test_a_question_length_rule_picks_its_generator(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n'
        + cloud(server)
        + QUOTES
        + '[[rules]]\nmax_words = 4\ngenerator = "quotes"\n',
    )
    short = ask(corpus, routes, "llamas Andes grass")
    assert short.route == "quotes" and "max_words 4" in short.route_reason
    assert server.requests == []
    assert ask(corpus, routes, PUBLIC_Q).route == "cloud"
    assert len(server.chat_requests) == 1


def test_a_question_pattern_or_length_in_characters_picks_its_generator(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n'
        + cloud(server)
        + QUOTES
        + '[[rules]]\nquestion = "(?i)\\\\bandes\\\\b"\ngenerator = "quotes"\n'
        + '[[rules]]\nmax_chars = 12\ngenerator = "quotes"\n',
    )
    matched = ask(corpus, routes, "Which animals live in the ANDES?")
    assert matched.route == "quotes" and "question ~ /(?i)\\bandes\\b/" in matched.route_reason
    short = ask(corpus, routes, "llama food?")
    assert short.route == "quotes" and "max_chars 12" in short.route_reason
    assert server.requests == []
    assert ask(corpus, routes, PUBLIC_Q).route == "cloud"
    assert len(server.chat_requests) == 1


def test_a_score_rule_picks_its_generator(corpus: Path, server: ChatServer, tmp_path: Path) -> None:
    routes = write(
        tmp_path,
        'default = "quotes"\n'
        + cloud(server)
        + QUOTES
        + '[[rules]]\nbelow_score = 0.1\ngenerator = "cloud"\n',
    )
    with open_collection(settings(corpus)) as col:
        good = col.search(PUBLIC_Q)[0].score
        poor = col.search("zebra quantum violin")[0].score
    assert poor < 0.1 <= good, (poor, good)
    assert ask(corpus, routes, PUBLIC_Q).route == "quotes"
    assert server.requests == []
    weak = ask(corpus, routes, "zebra quantum violin")
    assert weak.route == "cloud" and "below_score 0.1" in weak.route_reason
    assert len(server.chat_requests) == 1


def test_a_where_rule_matches_passage_metadata(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n'
        + cloud(server)
        + QUOTES
        + '[[rules]]\nwhere = { title = "Salaries" }\nlocal_only = true\ngenerator = "quotes"\n',
    )
    assert ask(corpus, routes, PRIVATE_Q).route == "quotes"
    assert server.requests == []


def test_the_data_directory_routes_file_is_used(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    import shutil

    shutil.copytree(corpus, data)
    assert find_routes(settings(data)) is None
    write(data, 'default = "quotes"\n' + cloud(server) + QUOTES)
    with open_collection(settings(data)) as col:
        assert col.ask(PUBLIC_Q).route == "quotes"
    assert server.requests == []


def test_routes_comes_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    assert Settings.from_env({"RAG_ROUTES": str(path)}).routes == path
    with pytest.raises(ConfigError, match="does not exist"):
        find_routes(Settings(data_dir=tmp_path, routes=path))


# --- broken files -----------------------------------------------------------------------------


GOOD = (
    'default = "quotes"\n'  # 1
    "[generators.quotes]\n"  # 2
    'kind = "extractive"\n'  # 3
    "[generators.cloud]\n"  # 4
    'kind = "openai"\n'  # 5
    'base_url = "http://127.0.0.1:9/v1"\n'  # 6
    'model = "m"\n'  # 7
    "[[rules]]\n"  # 8
    'generator = "quotes"\n'  # 9
    "max_words = 3\n"  # 10
    "[[rules]]\n"  # 11
    'source = "*/private/*"\n'  # 12
    'generator = "quotes"\n'  # 13
)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (GOOD + "local_only = maybe\n", 14, "TOML"),
        (GOOD + "colour = 1\n", 14, "unknown key 'colour'"),
        (GOOD.replace('generator = "quotes"\nmax', 'generator = "gpt"\nmax'), 9, "'gpt'"),
        (GOOD + 'where = "{\\"a\\": {\\"$regex\\": 1}}"\n', 14, "bad where filter"),
        (GOOD + "local_only = true\n" + 'generator2 = "x"\n', 15, "unknown key"),
        (GOOD.replace('model = "m"', 'model = "m"\ntemperature = 1'), 8, "temperature"),
        (
            GOOD.replace('generator = "quotes"\n', 'generator = "cloud"\nlocal_only = true\n', 1),
            9,
            "not local",
        ),
        (GOOD.replace('kind = "extractive"', 'kind = "magic"'), 3, "kind"),
        (GOOD.replace('default = "quotes"', 'default = "nope"'), 1, "'nope'"),
        (GOOD + 'question = "(unclosed"\n', 14, "bad question regular expression"),
        (GOOD + "max_chars = -1\n", 14, "max_chars must be a whole number of chars"),
        (
            GOOD.replace("[generators.cloud]", 'api_key = "sk-x"\n[generators.cloud]'),
            4,
            "unknown key 'api_key'",
        ),
    ],
)
def test_a_broken_routes_file_names_its_line(
    tmp_path: Path, text: str, line: int, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        Router.load(path)
    message = str(e.value)
    assert str(path) in message and f"line {line}" in message and words in message, message


def test_a_broken_routes_file_fails_ask_before_anything_is_sent(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n' + cloud(server) + '[[rules]]\ngenerator = "cloud"\nwhere = 3\n',
    )
    with pytest.raises(ConfigError, match="line 8: rule 1: where must be a filter"):
        ask(corpus, routes, PUBLIC_Q)
    assert server.requests == []


def test_api_key_env_must_name_a_variable(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('model = "m"', 'model = "m"\napi_key_env = "sk-abc-123"'))
    with pytest.raises(ConfigError, match=r"line 8.*never the key itself"):
        Router.load(path)


# --- the CLI ----------------------------------------------------------------------------------


def test_rag_ask_routes_option_reports_the_route(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(tmp_path, 'default = "cloud"\n' + cloud(server) + QUOTES + PRIVACY_RULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAG_"))}
    env["HF_HUB_OFFLINE"] = "1"
    base = [sys.executable, "-m", "apps.cli", "ask", "--data-dir", str(corpus), "-k", "1"]
    out = subprocess.run(
        [*base, PRIVATE_Q, "--routes", str(routes), "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["route"] == "quotes" and "local_only" in doc["route_reason"]
    text = subprocess.run(
        [*base, PRIVATE_Q, "--routes", str(routes)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert text.returncode == 0, text.stderr
    assert "Route: quotes (rule 1" in text.stdout
    assert server.requests == []


def test_rag_chat_follows_the_routes_and_goes_on_after_a_refusal(
    corpus: Path, server: ChatServer, tmp_path: Path
) -> None:
    routes = write(
        tmp_path,
        'default = "cloud"\n' + cloud(server) + '[[rules]]\nsource = "*/private/*"\n'
        "local_only = true\n",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "RAG_"))}
    env["HF_HUB_OFFLINE"] = "1"
    cmd = [sys.executable, "-m", "apps.cli", "chat", "--data-dir", str(corpus), "-k", "1"]
    out = subprocess.run(
        [*cmd, "--routes", str(routes)],
        input=f"{PRIVATE_Q}\n{PUBLIC_Q}\n",
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "routed by routes.toml" in out.stdout
    assert "refused: 1 private passage" in out.stdout
    assert "Route: cloud (no rule matched: the default)" in out.stdout
    (request,) = server.chat_requests
    assert "salary" not in json.dumps(request.messages)
