"""The openvino embedding backend against ONNX Runtime in fp32, with the real default model.

One export serves the module. The reference runs the same plain graph on ONNX Runtime, as the
onnx backend does after its fusions (which change no output by more than 1e-3, checked when
they are made); fusing here would cost CI seconds and test nothing about this backend.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import Embedder, EmbedderSpec
from rag.embeddings.onnx_export import onnx_session, read_model_spec
from rag.embeddings.onnx_runtime import GraphEmbedder
from rag.errors import MissingDependencyError

if importlib.util.find_spec("openvino") is None:
    if os.environ.get("CI"):
        pytest.fail("openvino is not installed, and CI must test the openvino backend")
    pytest.skip(
        "openvino is not installed (pip install 'ragkit[openvino]')", allow_module_level=True
    )
pytest.importorskip("onnxruntime")  # the export checks its graph with ONNX Runtime
pytest.importorskip("onnx")

from rag.embeddings import onnx_export, openvino_runtime
from rag.embeddings.openvino_runtime import OpenVinoEmbedder

pytestmark = pytest.mark.slow

#: Mean cosine to the fp32 vectors of TEXTS. OpenVINO infers in bf16 on CPUs with AMX or
#: AVX-512 BF16: 0.99998 (min 0.99996) on an AMX CPU; fp32 elsewhere, closer still.
MEAN_COS_FLOOR = 0.9995

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "",
    "Ünïcödé, accents: café, naïve; emoji 🙂; CJK 数字 漢字",
    "Scientific claim: aspirin reduces the risk of heart attack in adults over 50.",
    "The Eiffel Tower is 330 metres tall.",
    "Transformers use self-attention " * 60,  # truncates at 256 tokens
    "short",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openvino") / "models"


@pytest.fixture(scope="module")
def ov_embedder(cache: Path) -> OpenVinoEmbedder:
    return openvino_runtime.create(EmbedderSpec(DEFAULT_EMBED_MODEL, batch_size=3, cache_dir=cache))


class _OrtPlain(GraphEmbedder):
    """ONNX Runtime fp32 on a plain graph, with the backends' tokenising and pooling."""

    backend = "onnx"

    def __init__(self, path: Path) -> None:
        super().__init__(read_model_spec(DEFAULT_EMBED_MODEL), batch_size=32)
        self.path = path
        self._session = onnx_session(path, 2)

    def _hidden(self, ids: np.ndarray, mask: np.ndarray, *, query: bool) -> np.ndarray:
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        return self._session.run(None, feed)[0]


@pytest.fixture(scope="module")
def fp32(ov_embedder: OpenVinoEmbedder) -> GraphEmbedder:
    return _OrtPlain(ov_embedder.path)


def test_the_plugin(ov_embedder: OpenVinoEmbedder, fp32: GraphEmbedder) -> None:
    assert isinstance(ov_embedder, Embedder)
    assert ov_embedder.backend == "openvino" and ov_embedder.batch_size == 3
    assert (ov_embedder.id, ov_embedder.dim, ov_embedder.max_tokens) == (
        fp32.id,
        fp32.dim,
        fp32.max_tokens,
    )
    assert ov_embedder.count_tokens(TEXTS) == fp32.count_tokens(TEXTS)
    # The plain graph is listed as served, so the other backends' exports keep it.
    assert ov_embedder.path.name == "model.onnx"
    info = json.loads((ov_embedder.path.parent / "export.json").read_text())
    assert "model.onnx" in info["served"] and info["model_id"] == DEFAULT_EMBED_MODEL


def test_vectors_match_fp32(ov_embedder: OpenVinoEmbedder, fp32: GraphEmbedder) -> None:
    got = ov_embedder.embed(TEXTS)  # batch_size 3: several length-sorted batches
    want = fp32.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(axis=1)
    assert cos.mean() >= MEAN_COS_FLOOR and cos.min() > 0.999, (ov_embedder.precision, cos)
    assert float(got[0] @ got[1]) > float(got[0] @ got[5]) + 0.3
    assert ov_embedder.embed([]).shape == (0, 384)


def test_query_path_agrees(ov_embedder: OpenVinoEmbedder) -> None:
    # Queries run on their own compiled model (one thread), documents on another.
    docs = ov_embedder.embed(TEXTS)
    for i in (0, 2, 3, 6):
        q = ov_embedder.embed_query(TEXTS[i])
        assert q.shape == (384,) and q.dtype == np.float32
        assert float(q @ docs[i]) > 0.9999
        np.testing.assert_allclose(q, ov_embedder.embed([TEXTS[i]])[0], atol=1e-4)


def test_compiled_once_then_loaded_from_the_cache(
    cache: Path, ov_embedder: OpenVinoEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = sorted(ov_embedder.blob_dir.glob("*.blob"))
    assert blobs and ov_embedder.blob_dir.parent == ov_embedder.path.parent
    before = {p: p.stat().st_mtime_ns for p in blobs}

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    again = OpenVinoEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache)
    assert again.from_cache and again.path == ov_embedder.path
    assert {p: p.stat().st_mtime_ns for p in sorted(again.blob_dir.glob("*.blob"))} == before
    np.testing.assert_allclose(again.embed(TEXTS[:2]), ov_embedder.embed(TEXTS[:2]), atol=1e-6)


def test_thread_counts_reach_openvino(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_ONNX_THREADS", "1")
    emb = OpenVinoEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache, query_threads=2)
    assert emb.threads == 1
    assert emb._docs.get_property("INFERENCE_NUM_THREADS") == 1
    assert emb._query.get_property("INFERENCE_NUM_THREADS") == 2


def test_threads_share_one_embedder(ov_embedder: OpenVinoEmbedder) -> None:
    want = ov_embedder.embed(TEXTS)
    want_q = [ov_embedder.embed_query(t) for t in TEXTS]
    errors: list[BaseException] = []

    def work(query: bool) -> None:
        try:
            for _ in range(3):
                if query:
                    for t, w in zip(TEXTS, want_q, strict=True):
                        np.testing.assert_allclose(ov_embedder.embed_query(t), w, atol=1e-6)
                else:
                    np.testing.assert_allclose(ov_embedder.embed(TEXTS), want, atol=1e-6)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(q,)) for q in (False, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_missing_openvino(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"ragkit\[openvino\]") as info:
        OpenVinoEmbedder(DEFAULT_EMBED_MODEL, cache_dir=tmp_path)
    assert info.value.package == "openvino"


# --- openvino-int8: NNCF's static INT8 of the same graph --------------------------------------

#: Least cosine of the INT8 vectors of TEXTS to fp32's, the empty text apart. On SciFact
#: passages the mean was 0.995 (min 0.986) on a 2-core AMD EPYC with AVX-512 VNNI
#: (docs/benchmarks.md); here 0.988 to 0.998.
INT8_MIN_COS_FLOOR = 0.98
#: The empty text is two special tokens, whose activations the calibration texts do not
#: cover well: 0.906.
INT8_EMPTY_COS_FLOOR = 0.85


@pytest.fixture(scope="module")
def int8_embedder(cache: Path) -> OpenVinoEmbedder:
    spec = EmbedderSpec(DEFAULT_EMBED_MODEL, batch_size=3, cache_dir=cache)
    return openvino_runtime.create_int8(spec)


def test_int8_plugin_and_its_files(int8_embedder: OpenVinoEmbedder, fp32: GraphEmbedder) -> None:
    from rag.embeddings.calibration_texts import TEXTS as CALIBRATION

    assert isinstance(int8_embedder, Embedder) and int8_embedder.backend == "openvino-int8"
    assert int8_embedder.max_tokens == fp32.max_tokens
    path = int8_embedder.path
    assert path.name == f"model-int8-ov-{openvino_runtime.int8_key()}.xml"
    assert path.with_suffix(".bin").stat().st_size > 10 * 2**20  # INT8 weights, not a stub
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".model-int8-ov-")]
    info = json.loads((path.parent / "export.json").read_text())
    assert info["openvino_int8"]["file"] == path.name
    assert info["openvino_int8"]["calibration_texts"] == len(CALIBRATION)
    # The graph is quantised: OpenVINO's INT8 model holds FakeQuantize operations.
    assert "FakeQuantize" in path.read_text() or "FakeConvert" in path.read_text()


def test_int8_vectors_close_to_fp32(int8_embedder: OpenVinoEmbedder, fp32: GraphEmbedder) -> None:
    got = int8_embedder.embed(TEXTS)
    want = fp32.embed(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(axis=1)
    empty = TEXTS.index("")
    assert np.delete(cos, empty).min() >= INT8_MIN_COS_FLOOR, cos
    assert cos[empty] >= INT8_EMPTY_COS_FLOOR, cos
    assert (cos < 0.99999).any()  # not the fp32 model under another name
    assert float(got[0] @ got[1]) > float(got[0] @ got[5]) + 0.3
    for i in (0, 4, 6):
        q = int8_embedder.embed_query(TEXTS[i])
        assert float(q @ got[i]) > 0.999


def test_int8_made_once_per_cache(
    cache: Path, int8_embedder: OpenVinoEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nncf

    def no_quantize(*args: object, **kwargs: object) -> None:
        raise AssertionError("quantised again")

    monkeypatch.setattr(nncf, "quantize", no_quantize)
    monkeypatch.setattr(onnx_export, "export_onnx", no_quantize)
    again = OpenVinoEmbedder(DEFAULT_EMBED_MODEL, quantized=True, cache_dir=cache)
    assert again.path == int8_embedder.path
    np.testing.assert_allclose(again.embed(TEXTS[:3]), int8_embedder.embed(TEXTS[:3]), atol=1e-6)


def test_int8_without_nncf(
    int8_embedder: OpenVinoEmbedder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    plain = tmp_path / "m" / "model.onnx"
    plain.parent.mkdir()
    plain.symlink_to(int8_embedder.path.parent / "model.onnx")
    monkeypatch.setattr(openvino_runtime, "prepare_onnx", lambda *a, **k: plain)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else real(name, *a)
    )
    with pytest.raises(MissingDependencyError, match=r"ragkit\[openvino\]") as info:
        OpenVinoEmbedder(DEFAULT_EMBED_MODEL, quantized=True, cache_dir=tmp_path)
    assert info.value.package == "nncf"
    assert list(plain.parent.glob("*.xml")) == []
