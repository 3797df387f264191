"""LangChain's standard embeddings suite over ragkit's embedders: the model-free hashing
embedder, and the default (all-MiniLM-L6-v2 on INT8 ONNX, exported on first use); then the
vectors are ragkit's own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from langchain_core.embeddings import Embeddings
from langchain_tests.integration_tests import EmbeddingsIntegrationTests

from apps.langchain import RagkitEmbeddings
from rag.config import DEFAULT_EMBED_MODEL, default_embed_backend
from rag.embeddings import load_embedder
from rag.errors import ConfigError

pytestmark = pytest.mark.anyio

TEXTS = ["ragkit installs with pip", "the moon orbits the earth", "ünïcödé ✓"]


class TestHashingEmbeddings(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Embeddings]:
        return RagkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "hashing-384", "backend": "hashing"}


class TestDefaultEmbeddings(EmbeddingsIntegrationTests):
    """ragkit's default embedder, INT8 ONNX."""

    @property
    def embeddings_class(self) -> type[Embeddings]:
        return RagkitEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {}


def test_default_is_ragkits_default_and_vectors_are_ragkits() -> None:
    emb = RagkitEmbeddings()
    want = default_embed_backend(None)
    assert want in ("onnx-int8", "openvino-int8")  # the extras are installed for the tests
    assert (emb.embedder.id, emb.embedder.backend) == (DEFAULT_EMBED_MODEL, want)
    assert emb.dim == 384
    docs = np.array(emb.embed_documents(TEXTS))
    assert np.allclose(docs, emb.embedder.embed(TEXTS), atol=1e-6)
    assert np.allclose(np.linalg.norm(docs, axis=1), 1.0, atol=1e-4)
    query = np.array(emb.embed_query("how to install"))
    assert np.allclose(query, emb.embedder.embed_query("how to install"), atol=1e-6)
    assert float(query @ docs[0]) > float(query @ docs[1])  # a real model, not noise


def test_wraps_a_loaded_embedder() -> None:
    embedder = load_embedder("hashing-384", "hashing")
    emb = RagkitEmbeddings(embedder=embedder)
    assert emb.embedder is embedder
    assert emb.embed_documents([]) == []
    assert np.allclose(emb.embed_documents(TEXTS), embedder.embed(TEXTS))
    with pytest.raises(ConfigError):
        RagkitEmbeddings("hashing-384", embedder=embedder)


def test_the_adapters_do_not_shadow_the_real_packages() -> None:
    """``apps.langchain`` and ``apps.llamaindex`` import the real ``langchain_core`` and
    ``llama_index``, and never stand in for a top-level ``langchain``."""
    code = (
        "import importlib.util, json, sys\n"
        "from apps.langchain import RagkitEmbeddings, RagkitRetriever, RagkitVectorStore\n"
        "from apps.llamaindex import RagkitRetriever as LlamaRetriever\n"
        "import langchain_core, llama_index.core\n"
        "spec = importlib.util.find_spec('langchain')\n"
        "print(json.dumps({'core': langchain_core.__file__, 'llama': llama_index.core.__file__,\n"
        "  'langchain': spec.origin if spec else None,\n"
        "  'loaded': 'langchain' in sys.modules}))\n"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout)
    apps = str(root / "apps")
    assert "site-packages" in found["core"] and "site-packages" in found["llama"]
    assert found["langchain"] is None or not found["langchain"].startswith(apps)
    assert not found["loaded"]
