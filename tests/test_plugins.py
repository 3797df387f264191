"""The plugin registry: built-ins and third-party plugins through one mechanism."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rag import plugins
from rag.errors import MissingDependencyError, PluginError
from tests.toy_plugin import write_dist, write_package

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = ("faiss", "chromadb", "qdrant_client", "qdrant_edge", "psycopg", "torch", "onnxruntime")


def run(args: list[str], *, path: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(path), str(ROOT)])
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


def rag(*args: str, path: Path | None = None) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "apps.cli", *args], path=path)


def registry_over(*folders: Path) -> plugins.Registry:
    """A registry of what the current environment plus ``folders`` declare."""
    dists = list(md.distributions())
    for folder in folders:
        dists += list(md.distributions(path=[str(folder)]))
    eps = md.EntryPoints(ep for d in dists for ep in d.entry_points)
    return plugins.Registry(eps)


def test_builtins_are_declared_as_entry_points_like_any_plugin() -> None:
    reg = plugins.registry()
    assert reg.names("stores") == ["chroma", "faiss", "pgvector", "qdrant"]
    assert reg.names("sources") == ["filesystem", "git", "sql", "web"]
    assert set(reg.names("generators")) == {"local", "openai", "extractive"}
    assert {"torch", "onnx", "onnx-int8", "hashing"} <= set(reg.names("embedders"))
    assert {"ingest", "search", "ask", "ui", "eval", "bench", "plugins"} <= set(
        reg.names("commands")
    )
    for group in plugins.GROUPS:
        for p in reg.plugins(group).values():
            assert p.package == "ragkit", p
            assert p.load() is not None  # every declared target exists


def test_a_third_party_store_and_command_plug_in(tmp_path: Path) -> None:
    folder = write_package(tmp_path / "site")
    out = rag("stores", "--json", path=folder)
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["stores"]}
    assert rows["toy"]["package"] == "ragkit_toy"
    assert rows["toy"]["description"] == "a toy store from a third-party package"
    assert {"faiss", "chroma", "qdrant", "pgvector"} <= set(rows)

    hello = rag("hello", "--collection", "docs", "--shout", path=folder)
    assert hello.returncode == 0, hello.stderr
    assert hello.stdout.strip() == "HELLO FROM THE TOY PLUGIN, COLLECTION DOCS"
    assert "hello" in rag("--help", path=folder).stdout

    # The whole ingest/search path runs on the plugin's store.
    data = tmp_path / "rag"
    common = ["--data-dir", str(data), "--store", "toy"]
    ingest = rag(
        "ingest", str(ROOT / "data"), *common, "--embed-backend", "hashing", "--json", path=folder
    )
    assert ingest.returncode == 0, ingest.stderr
    assert json.loads(ingest.stdout)["total_chunks"] > 20
    found = rag("search", "default vector store", *common, "--k", "2", "--json", path=folder)
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)["hits"]) == 2
    assert (data / "stores" / "toy" / "default.json").exists()


def write_docs_example(folder: Path) -> None:
    """The worked example of docs/architecture.md, installed as the package ``mystore``."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Adding a store", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    toml = section.split("```toml", 1)[1].split("```", 1)[0]
    name, target = toml.strip().splitlines()[-1].replace('"', "").split(" = ")
    (folder / "mystore").mkdir(parents=True)
    (folder / "mystore" / "__init__.py").write_text(code)
    write_dist(folder, "mystore", {"ragkit.stores": {name: target}})


def test_the_conformance_suite_runs_plugin_stores(tmp_path: Path) -> None:
    # The toy store, and the worked example of docs/architecture.md as it is written there.
    folder = write_package(tmp_path / "site")
    write_docs_example(folder)
    out = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(ROOT / "tests" / "test_conformance.py"),
            "-k",
            "toy or numpy",
        ],
        path=folder,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    summary = out.stdout.strip().splitlines()[-1]
    passed = int(summary.split(" passed")[0].split()[-1])
    assert passed >= 40, summary  # about 25 contract tests for each of the two stores
    assert "failed" not in summary and "skipped" not in summary, summary


def test_a_name_clash_names_both_packages(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    write_dist(folder, "other_faiss", {"ragkit.stores": {"faiss": "other_faiss:Store"}})
    reg = registry_over(folder)
    assert "faiss" not in reg.names("stores")
    with pytest.raises(PluginError, match=r"'faiss'.*ragkit .*other_faiss|other_faiss.*ragkit"):
        reg.get("stores", "faiss")
    # The CLI says so too, on the command that uses the name and in the listing.
    out = rag("search", "x", "--store", "faiss", path=folder)
    assert out.returncode == 1
    assert "other_faiss" in out.stderr and "ragkit" in out.stderr
    listed = rag("stores", path=folder)
    assert listed.returncode == 1 and "other_faiss" in listed.stdout


def test_a_command_clash_stops_the_cli_with_both_names(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    write_dist(folder, "other_cli", {"ragkit.commands": {"ingest": "other_cli:ingest"}})
    out = rag("--help", path=folder)
    assert out.returncode == 1
    assert "'ingest'" in out.stderr and "other_cli" in out.stderr and "ragkit" in out.stderr


def test_a_missing_extra_is_reported_before_anything_is_imported(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    info = folder / "needy-0.1.dist-info"
    write_dist(folder, "needy", {"ragkit.stores": {"needy": "needy_store:Store [fast]"}})
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: needy\nVersion: 0.1\nProvides-Extra: fast\n"
        'Requires-Dist: surely-not-installed-pkg>=1; extra == "fast"\n'
    )
    plugins.refresh()
    try:
        reg = registry_over(folder)
        p = reg.get("stores", "needy")
        assert p.missing() == ["surely-not-installed-pkg"]
        assert p.install_hint == "pip install 'needy[fast]'"
        with pytest.raises(MissingDependencyError, match=r"pip install 'needy\[fast\]'"):
            p.load()
    finally:
        plugins.refresh()


def test_unknown_names_list_what_is_known() -> None:
    with pytest.raises(PluginError, match="unknown store 'qdrnt'; known: chroma, faiss"):
        plugins.get("stores", "qdrnt")
    with pytest.raises(PluginError, match="unknown plugin group"):
        plugins.names("widgets")


def test_listing_plugins_imports_no_driver() -> None:
    code = (
        "import sys\n"
        "from apps.cli import main\n"
        "for argv in (['stores'], ['plugins'], ['plugins', '--json']):\n"
        "    assert main(argv) == 0\n"
        f"print(sorted(m for m in {DRIVERS!r} if m in sys.modules))\n"
    )
    out = run([sys.executable, "-c", code])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_plugins_lists_every_group() -> None:
    out = rag("plugins", "--json")
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)
    assert set(groups) == set(plugins.GROUPS)
    assert groups["sources"]["entry_points"] == "ragkit.sources"
    names = {r["name"]: r for r in groups["generators"]["plugins"]}
    assert names["local"]["description"].startswith("A GGUF chat model")


def test_a_broken_command_fails_alone(tmp_path: Path) -> None:
    folder = tmp_path / "site"
    write_dist(folder, "broken_cli", {"ragkit.commands": {"wobble": "surely_no_module:command"}})
    listing = rag("--help", path=folder)
    assert listing.returncode == 0, listing.stderr
    assert "wobble" in listing.stdout and "unavailable" in listing.stdout
    assert rag("stores", path=folder).returncode == 0  # the other commands still work
    out = rag("wobble", "--anything", path=folder)
    assert out.returncode == 1
    assert "wobble" in out.stderr and "cannot be imported" in out.stderr
