"""The model cache and what an ingest shows about it: one folder of exported models per user,
holding only the graphs the runtime loads; the export announced while it runs and counted in
the ingest's time; the progress counted in chunks.

The export steps are replaced by fakes in the quick tests; one slow test runs the real
export through `rag ingest` into two data directories.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag import config, embeddings, plugins
from rag.config import Settings
from rag.embeddings import EmbedderSpec
from rag.embeddings import onnx_export as ox
from rag.embeddings.hashing import HashingEmbedder
from rag.indexing import Progress

pytest_plugins = ["tests.export_support"]  # fake_export

ROOT = Path(__file__).resolve().parent.parent
RAG = [sys.executable, "-m", "apps.cli"]

# --------------------------------------------------------------------------- where


def test_models_go_to_the_users_cache_not_the_data_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAG_MODELS_DIR", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    a, b = Settings(data_dir=tmp_path / "a"), Settings(data_dir=tmp_path / "b")
    assert config.models_dir(a) == config.models_dir(b) == tmp_path / "xdg" / "ragkit" / "models"
    assert config.models_dir() == config.models_dir(a)
    # Unset, or relative (invalid by the XDG specification): ~/.cache.
    for value in ("", "relative/cache"):
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        assert config.models_dir(a) == tmp_path / "home" / ".cache" / "ragkit" / "models"
    # RAG_MODELS_DIR still decides where it is set.
    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path / "shared"))
    assert config.models_dir(a) == tmp_path / "shared"


def test_without_a_home_folder_the_data_dir_holds_the_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RAG_MODELS_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    assert config.models_dir(Settings(data_dir=tmp_path)) == tmp_path / "models"
    with pytest.raises(config.ConfigError, match="RAG_MODELS_DIR"):
        config.models_dir()


# --------------------------------------------------------------------------- what stays


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


def test_only_the_graphs_the_runtime_loads_stay(
    fake_export: tuple[ox.ModelSpec, list], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, calls = fake_export
    cache = tmp_path / "cache"
    int8_name = f"model-int8-{ox.DEFAULT_INT8_RECIPE.key}.onnx"
    caplog.set_level(logging.INFO, logger="rag.embeddings")

    path = ox.prepare_onnx(spec, cache, quantized=True)
    folder = path.parent
    assert path.name == int8_name
    assert calls == [
        ("export", "model.onnx"),
        ("fuse", "model.onnx"),
        ("quantize", "model-opt.onnx"),
    ]
    assert set(_files(folder)) == {".lock", "export.json", int8_name}
    info = json.loads((folder / "export.json").read_text())
    assert info["served"] == [int8_name] and info["fused"] is True
    assert info["model_id"] == "org/tiny-model" and info["export_version"] == ox.EXPORT_VERSION
    # Announced while it runs, and how long it took.
    messages = [r.getMessage() for r in caplog.records if r.name == "rag.embeddings"]
    assert messages[0] == "exporting tiny-model to ONNX (int8), once per machine…"
    assert messages[1].startswith("exported tiny-model to ONNX (int8) in ")
    assert messages[1].endswith(f" s, cached in {cache}") and len(messages) == 2

    # Found again: nothing made, nothing said, nothing touched.
    caplog.clear()
    before = _files(folder)
    assert ox.prepare_onnx(spec, cache, quantized=True) == path
    assert len(calls) == 3 and caplog.records == [] and _files(folder) == before

    # The fp32 backend needs its own graph: made again, kept beside the INT8 one.
    fp32 = ox.prepare_onnx(spec, cache, quantized=False)
    assert fp32.name == "model-opt.onnx"
    assert calls[3:] == [("export", "model.onnx"), ("fuse", "model.onnx")]
    assert set(_files(folder)) == {".lock", "export.json", int8_name, "model-opt.onnx"}
    assert json.loads((folder / "export.json").read_text())["served"] == sorted(
        [int8_name, "model-opt.onnx"]
    )
    # A recipe on the fused graph now needs no export at all.
    other = ox.QuantRecipe("other")
    assert ox.prepare_onnx(spec, cache, quantized=True, recipe=other).is_file()
    assert calls[5:] == [("quantize", "model-opt.onnx")]
    assert len([p for p in folder.iterdir() if p.suffix == ".onnx"]) == 3


def test_leftovers_of_a_killed_export_are_removed(
    fake_export: tuple[ox.ModelSpec, list], tmp_path: Path
) -> None:
    spec, _ = fake_export
    folder = tmp_path / "cache" / ox.model_key(spec)
    folder.mkdir(parents=True)
    (folder / ".model.123.abcd1234.tmp.onnx").write_bytes(b"half a graph")
    (folder / ".export.json.123.tmp").write_text("{")
    path = ox.prepare_onnx(spec, tmp_path / "cache", quantized=True)
    assert set(_files(folder)) == {".lock", "export.json", path.name}


def test_an_export_of_replaced_files_is_dropped(
    fake_export: tuple[ox.ModelSpec, list], tmp_path: Path
) -> None:
    spec, calls = fake_export
    cache = tmp_path / "cache"
    old = ox.prepare_onnx(spec, cache, quantized=True).parent
    # Another model's export stays.
    elsewhere = cache / "org-other-0123456789ab"
    elsewhere.mkdir()
    (elsewhere / "export.json").write_text(json.dumps({"source": "/somewhere/else"}))
    # The package is reinstalled: the same folder, new files, a new key.
    config_file = spec.root / "config.json"
    config_file.write_text("{ }")
    os.utime(config_file, ns=(1, 1))
    new = ox.prepare_onnx(spec, cache, quantized=True).parent
    assert new != old and not old.exists() and elsewhere.is_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted([new.name, elsewhere.name])
    assert [c[0] for c in calls] == ["export", "fuse", "quantize"] * 2


def test_intermediates_kept_on_request(
    fake_export: tuple[ox.ModelSpec, list], tmp_path: Path
) -> None:
    spec, calls = fake_export
    cache = tmp_path / "cache"
    ox.prepare_onnx(spec, cache, quantized=False)
    assert not (cache / ox.model_key(spec) / "model.onnx").exists()
    # eval/quantization.py compares the plain graph with the fused one.
    path = ox.prepare_onnx(spec, cache, quantized=False, keep_intermediates=True)
    assert (path.parent / "model.onnx").is_file() and path.name == "model-opt.onnx"
    assert [c[0] for c in calls] == ["export", "fuse", "export"]


# --------------------------------------------------------------------------- the CLI shows it


def test_the_cli_shows_the_export_unless_asked_for_silence(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from apps.cli.ingest import model_notes

    logger = logging.getLogger("rag.embeddings")
    root = logging.getLogger()
    seen = logging.StreamHandler(sys.stdout)  # as a library's basicConfig() would add
    root.addHandler(seen)
    try:
        with model_notes(True):
            logger.info("exporting %s to ONNX (%s), once per machine…", "m\x1b[2J", "int8")
    finally:
        root.removeHandler(seen)
    with model_notes(False):
        logger.info("exporting quietly")
    logger.info("outside any command")
    out, err = capsys.readouterr()
    assert "exporting m" in err and "once per machine" in err and "\x1b" not in err
    assert err.count("exporting") == 1 and out == ""  # shown once
    assert "quietly" not in err and "outside" not in err
    assert logger.level == logging.NOTSET and not logger.handlers and logger.propagate


# --------------------------------------------------------------------------- the report's time


class _SlowToLoad(HashingEmbedder):
    """A hashing embedder that takes a while to construct, as a model's first export does."""

    backend = "slow"
    load_seconds = 0.6

    def __init__(self) -> None:
        time.sleep(self.load_seconds)
        super().__init__(64)


def slow_plugin(spec: EmbedderSpec) -> _SlowToLoad:
    return _SlowToLoad()


@pytest.fixture
def slow_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    ep = md.EntryPoint("slow", "tests.test_model_cache:slow_plugin", "ragkit.embedders")
    real = [e for g in plugins.GROUPS.values() for e in md.entry_points(group=g)]
    eps = md.EntryPoints([*real, ep])
    monkeypatch.setattr(plugins, "registry", lambda: plugins.Registry(eps))
    embeddings._CACHE.pop(("hashing-64", "slow"), None)
    yield
    embeddings._CACHE.pop(("hashing-64", "slow"), None)


@pytest.mark.usefixtures("slow_backend")
def test_the_reported_time_includes_preparing_the_model(tmp_path: Path) -> None:
    from rag.collection import open_collection

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Glaciers retreat twelve metres a year.\n")
    settings = Settings(data_dir=tmp_path / "rag", embed_model="hashing-64", embed_backend="slow")
    with open_collection(settings, create=True) as col:
        report = col.ingest([docs])
    out = report.to_json()
    assert out["added"] == 1
    assert out["model_seconds"] >= _SlowToLoad.load_seconds
    assert out["seconds"] >= out["model_seconds"]


# --------------------------------------------------------------------------- chunks


def test_progress_counts_chunks(tmp_path: Path) -> None:
    from rag.collection import open_collection

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(12):  # files of very different sizes: files are a poor unit of work
        (docs / f"f{i}.txt").write_text(f"Paragraph {i} about topic {i}. " * (5 + 60 * (i % 3)))
    seen: list[Progress] = []
    settings = Settings(
        data_dir=tmp_path / "rag",
        embed_model="hashing-64",
        embed_backend="hashing",
        chunk_size=32,
        chunk_overlap=4,
    )
    with open_collection(settings, create=True) as col:
        report = col.ingest([docs], progress=seen.append)
    assert seen, "no progress reported"
    last = seen[-1]
    assert last.chunks == last.chunks_total == report.chunks > 12
    assert (last.files_done, last.files_total) == (12, 12)
    totals = [p.chunks_total for p in seen]
    assert totals == sorted(totals)  # the total grows as files are read, never shrinks
    assert all(p.chunks <= p.chunks_total for p in seen)
    assert [p.chunks for p in seen] == sorted(p.chunks for p in seen)


def test_the_progress_bar_counts_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from apps.cli.ingest import ProgressBar

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = ProgressBar()
    bar(Progress(10, 1, chunks=0, chunks_total=40, embedded=0, embed_seconds=0.0, failed=0))
    bar(Progress(10, 3, chunks=256, chunks_total=300, embedded=256, embed_seconds=2.0, failed=1))
    bar(Progress(10, 10, chunks=480, chunks_total=480, embedded=480, embed_seconds=4.0, failed=1))
    bar.close()  # draws the last step, which came within the redraw interval
    text = err.getvalue()
    assert "480/480" in text and "chunk" in text
    assert "10/10 files" in text and "1 failed" in text


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_two_data_dirs_share_one_export(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The lighthouse keeper counts 217 steps to the lamp room.\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), RAG_ONNX_THREADS="1")
    cache = tmp_path / "xdg" / "ragkit" / "models"

    def ingest(data_dir: str, *extra: str) -> subprocess.CompletedProcess[str]:
        # onnx-int8 by name: the default on a VNNI CPU is openvino-int8 (its cache is
        # tested in test_openvino_embed.py).
        args = ["--data-dir", str(tmp_path / data_dir), "--embed-backend", "onnx-int8"]
        proc = subprocess.run(
            [*RAG, "ingest", str(docs), *args, *extra],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    first = ingest("one")
    assert "exporting all-MiniLM-L6-v2 to ONNX (int8), once per machine…" in first.stderr
    assert "exported all-MiniLM-L6-v2 to ONNX (int8) in " in first.stderr
    [folder] = cache.iterdir()
    files = _files(folder)
    names = set(files)
    assert names == {".lock", "export.json", f"model-int8-{ox.DEFAULT_INT8_RECIPE.key}.onnx"}
    assert not (tmp_path / "one" / "models").exists()

    second = ingest("two", "--json")
    assert json.loads(second.stdout)["added"] == 1
    assert "export" not in second.stderr
    assert _files(folder) == files  # reused as it was: nothing exported, nothing rewritten
    assert [p.name for p in cache.iterdir()] == [folder.name]
    assert not (tmp_path / "two" / "models").exists()
