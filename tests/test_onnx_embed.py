"""The ONNX embedding backends against the torch backend, with the real default model.

One export is shared by the whole module: two processes race to make it (the concurrency
test), and every other test loads the cached graph.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import Embedder, load_embedder
from rag.errors import EmbeddingError, MissingDependencyError

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from rag.embeddings import onnx_export, onnx_runtime
from rag.embeddings.onnx_runtime import OnnxEmbedder

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

#: The default recipe's mean cosine to torch's vectors, less a margin for texts unlike
#: SciFact's: on a VNNI CPU (signed weights per channel, every product in INT8) 0.9946 on 300
#: SciFact passages (eval/quantization.py) and 0.989 on TEXTS below; SciFact nDCG@10 0.6494
#: against torch's 0.6520 (docs/benchmarks.md).
INT8_MEAN_COS_FLOOR = 0.985

TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "",
    "   leading and trailing spaces   ",
    "UPPER case Text With MiXeD case",
    "Ünïcödé, accents: café, naïve, Zürich; emoji 🙂🚀; CJK 数字 漢字; Arabic مرحبا",
    "Numbers 3.14159, 2,718 and dates 2024-05-01 or 1/2/03.",
    "def f(x):\n    return x ** 2  # code with\ttabs and newlines",
    "https://example.com/path?query=1&b=2 and user@example.org",
    "short",
    "The mitochondria is the powerhouse of the cell. " * 3,
    "Vector databases index embeddings for approximate nearest neighbour search.",
    "The Eiffel Tower is 330 metres tall.",
    "Transformers use self-attention " * 60,  # truncates at 256 tokens
    "word " * 1000,  # truncates far past the limit
    " ".join(f"token{i}" for i in range(300)),
    "a",
    "?!",
    "Scientific claim: aspirin reduces the risk of heart attack in adults over 50.",
    "The quick brown fox jumps over the lazy dog. " * 5,
    "Protein folding is determined by the amino acid sequence. " * 12,
    "résumé vs resume; coöperate; façade",
    "Line one.\n\nLine two after a blank line.\r\nWindows line.",
    "$$ \\int_0^1 x^2 dx = 1/3 $$",
    "The 1990s saw a rise in internet adoption across Europe and Asia.",
    "OK",
    "Claims about vaccines must be checked against randomised controlled trials. " * 8,
    "HTML <b>bold</b> &amp; entities &lt;tag&gt;",
]


def _spawn_export(cache: Path) -> subprocess.Popen[str]:
    code = (
        "import sys; from pathlib import Path; from rag.embeddings.onnx_runtime import OnnxEmbedder; "
        "e = OnnxEmbedder(sys.argv[1], cache_dir=Path(sys.argv[2])); "
        "print(e.path); print(float(e.embed(['A man is eating food.'])[0] @ "
        "e.embed_query('A man is eating a piece of bread.')))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, DEFAULT_EMBED_MODEL, str(cache)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(scope="session")
def race(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, str, str]]]:
    """Two processes export the model at once into a cache folder that does not exist yet."""
    cache = tmp_path_factory.mktemp("onnx") / "not" / "yet" / "models"
    procs = [_spawn_export(cache) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        results.append((p.returncode, out, err))
    return cache, results


@pytest.fixture(scope="session")
def cache(race: tuple[Path, list[tuple[int, str, str]]]) -> Path:
    for rc, _, err in race[1]:
        assert rc == 0, err[-3000:]
    return race[0]


@pytest.fixture(scope="session")
def fp32(cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache)


@pytest.fixture(scope="session")
def int8(cache: Path) -> OnnxEmbedder:
    return OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache, quantized=True)


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    return load_embedder(DEFAULT_EMBED_MODEL, "torch")


def test_concurrent_export_leaves_one_valid_model(
    race: tuple[Path, list[tuple[int, str, str]]],
) -> None:
    cache, results = race
    assert [rc for rc, _, _ in results] == [0, 0], [err[-2000:] for _, _, err in results]
    paths = {out.splitlines()[0] for _, out, _ in results}
    assert len(paths) == 1  # both use the same file
    sims = [float(out.splitlines()[1]) for _, out, _ in results]
    assert sims[0] == pytest.approx(0.7553, abs=2e-3) and sims[0] == pytest.approx(sims[1])
    folders = [p for p in cache.iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("sentence-transformers-all-minilm")
    leftovers = [p.name for p in folders[0].iterdir() if ".tmp" in p.name]
    assert leftovers == []
    import onnx

    served = Path(paths.pop())
    assert served.parent == folders[0] and served.name == "model-opt.onnx"  # fused
    onnx.checker.check_model(str(served))
    assert not (folders[0] / "model.onnx").exists()  # the export's intermediate is gone
    info = json.loads((folders[0] / "export.json").read_text())
    assert info["model_id"] == DEFAULT_EMBED_MODEL and info["opset"] >= 14
    assert "model-opt.onnx" in info["served"]


def test_export_is_reused(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = next(p for p in cache.iterdir() if p.is_dir())
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_export, "export_onnx", no_export)
    monkeypatch.setattr(onnx_export, "fuse_onnx", no_export)
    emb = OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache)
    assert emb.path.parent == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before


def test_identity_matches_torch(
    fp32: OnnxEmbedder, int8: OnnxEmbedder, torch_embedder: Embedder
) -> None:
    for emb, backend in ((fp32, "onnx"), (int8, "onnx-int8")):
        assert isinstance(emb, Embedder)
        assert emb.id == torch_embedder.id == DEFAULT_EMBED_MODEL
        assert emb.backend == backend
        assert emb.dim == torch_embedder.dim == 384
        assert emb.max_tokens == torch_embedder.max_tokens == 254
        assert emb.count_tokens(TEXTS) == torch_embedder.count_tokens(TEXTS)
    assert fp32.count_tokens(["hello world", "", "word " * 1000]) == [2, 0, 1000]


def test_fp32_matches_torch(fp32: OnnxEmbedder, torch_embedder: Embedder) -> None:
    want = torch_embedder.embed(TEXTS)
    got = fp32.embed(TEXTS)
    assert got.shape == (len(TEXTS), 384) and got.dtype == np.float32
    cos = (got * want).sum(axis=1)
    assert cos.min() > 0.9999, {TEXTS[i][:40]: float(cos[i]) for i in np.argsort(cos)[:3]}


def test_int8_is_close_and_normalised(int8: OnnxEmbedder, torch_embedder: Embedder) -> None:
    want = torch_embedder.embed(TEXTS)
    got = int8.embed(TEXTS)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * want).sum(axis=1)
    assert cos.mean() > INT8_MEAN_COS_FLOOR and cos.min() > 0.95
    # It still tells related texts from unrelated ones.
    assert float(got[0] @ got[1]) > float(got[0] @ got[12]) + 0.3


def test_the_served_graphs_are_fused_and_quantised(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    import onnx

    def ops(path: Path) -> set[str]:
        return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}

    # Attention, GELU and embedding fused; layer norms not fused with their residual Add
    # (ONNX Runtime's SkipLayerNormalization kernel was 8x slower on CPU).
    assert {"Attention", "BiasGelu", "EmbedLayerNormalization"} <= ops(fp32.path)
    assert "SkipLayerNormalization" not in ops(fp32.path)
    assert int8.recipe == onnx_export.DEFAULT_INT8_RECIPE
    quantised = ops(int8.path)
    assert "QAttention" in quantised and "SkipLayerNormalization" not in quantised
    if int8.recipe == onnx_export.VNNI_INT8_RECIPE:  # every matrix product in INT8
        assert "MatMul" not in quantised and "Attention" not in quantised


def test_batches_restore_the_input_order(cache: Path, fp32: OnnxEmbedder) -> None:
    small = OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache, batch_size=3)
    texts = TEXTS[::-1]  # lengths vary, so sorting by length reorders the rows
    one_by_one = np.stack([fp32.embed([t])[0] for t in texts])
    np.testing.assert_allclose(small.embed(texts), one_by_one, atol=2e-5)
    np.testing.assert_allclose(fp32.embed(texts), one_by_one, atol=2e-5)
    assert fp32.embed([]).shape == (0, 384)


def test_query_and_document_paths_agree(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    # INT8 quantises activations with one scale per batch, so a text's vector moves with its
    # batch-mates (most for very short texts among long ones); fp32 is exact up to rounding.
    for emb, floor in ((fp32, 0.9999), (int8, 0.95)):
        docs = emb.embed(TEXTS)
        for i in (0, 2, 5, 13):
            q = emb.embed_query(TEXTS[i])
            assert q.shape == (384,) and q.dtype == np.float32
            assert float(q @ docs[i]) > floor
            np.testing.assert_allclose(q, emb.embed([TEXTS[i]])[0], atol=1e-5)


def test_threads_share_one_embedder(fp32: OnnxEmbedder) -> None:
    docs = [t for t in TEXTS if len(t) < 400]
    want_docs = fp32.embed(docs)
    want_queries = [fp32.embed_query(t) for t in TEXTS[:8]]
    errors: list[BaseException] = []

    def ingest() -> None:
        try:
            for _ in range(3):
                np.testing.assert_allclose(fp32.embed(docs), want_docs, atol=2e-5)
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def ask() -> None:
        try:
            for _ in range(3):
                for t, want in zip(TEXTS[:8], want_queries, strict=True):
                    np.testing.assert_allclose(fp32.embed_query(t), want, atol=2e-5)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=ingest), threading.Thread(target=ask)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_no_torch_once_exported(cache: Path, int8: OnnxEmbedder) -> None:
    code = (
        "import sys; from pathlib import Path; from rag.embeddings.onnx_runtime import OnnxEmbedder\n"
        "for q in (False, True):\n"
        "    e = OnnxEmbedder(sys.argv[1], cache_dir=Path(sys.argv[2]), quantized=q)\n"
        "    assert e.embed(['hello world']).shape == (1, 384)\n"
        "print(sorted(m for m in ('torch', 'sentence_transformers', 'transformers') if m in sys.modules))\n"
    )
    env = dict(os.environ, RAG_ONNX_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", code, DEFAULT_EMBED_MODEL, str(cache)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=True,
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_thread_count_from_the_environment(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAG_ONNX_THREADS", "1")
    assert OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache).threads == 1
    monkeypatch.delenv("RAG_ONNX_THREADS")
    assert (
        OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=cache).threads == onnx_runtime.physical_cores()
    )


def test_load_embedder_dispatches(cache: Path) -> None:
    from rag import embeddings

    # Another test may have loaded the default (INT8) embedder with another cache already.
    embeddings._CACHE.pop((DEFAULT_EMBED_MODEL, "onnx-int8"), None)
    try:
        emb = load_embedder(DEFAULT_EMBED_MODEL, "onnx-int8", cache_dir=cache)
        assert isinstance(emb, OnnxEmbedder) and emb.backend == "onnx-int8"
        assert emb.path.parent.parent == cache
    finally:
        embeddings._CACHE.pop((DEFAULT_EMBED_MODEL, "onnx-int8"), None)


def test_missing_onnxruntime(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with pytest.raises(MissingDependencyError, match=r"ragkit\[onnx\]") as info:
        OnnxEmbedder(DEFAULT_EMBED_MODEL, cache_dir=tmp_path)
    assert info.value.package == "onnxruntime"


def _fake_model(folder: Path, *, pooling: dict[str, bool], weights: bool = False) -> Path:
    from rag.embeddings.models import resolve_model

    real = Path(resolve_model(DEFAULT_EMBED_MODEL)[1])
    folder.mkdir()
    for name in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "sentence_bert_config.json",
    ):
        (folder / name).write_bytes((real / name).read_bytes())
    if weights:
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    (folder / "modules.json").write_text(
        json.dumps(
            [
                {
                    "idx": 0,
                    "name": "0",
                    "path": "",
                    "type": "sentence_transformers.models.Transformer",
                },
                {
                    "idx": 1,
                    "name": "1",
                    "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling",
                },
            ]
        )
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 384,
                **{f"pooling_mode_{k}": v for k, v in pooling.items()},
            }
        )
    )
    return folder


def test_unsupported_pooling_points_to_torch(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "maxpool", pooling={"max_tokens": True, "mean_tokens": False})
    with pytest.raises(EmbeddingError, match="--embed-backend torch"):
        OnnxEmbedder(str(model), cache_dir=tmp_path / "cache")
    (model / "modules.json").unlink()
    with pytest.raises(EmbeddingError, match="--embed-backend torch"):
        OnnxEmbedder(str(model), cache_dir=tmp_path / "cache")


def test_cls_pooling_is_read(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "cls", pooling={"cls_token": True, "mean_tokens": False})
    spec = onnx_export.read_model_spec(str(model))
    assert (spec.pooling, spec.max_seq_length, spec.dim) == ("cls", 256, 384)


def test_a_model_that_cannot_be_exported(tmp_path: Path) -> None:
    model = _fake_model(tmp_path / "broken", pooling={"mean_tokens": True}, weights=True)
    with pytest.raises(EmbeddingError, match="export"):
        OnnxEmbedder(str(model), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.onnx"))


def test_model_keys_differ_by_folder_and_version(tmp_path: Path) -> None:
    a = onnx_export.read_model_spec(str(_fake_model(tmp_path / "a", pooling={"mean_tokens": True})))
    b = onnx_export.read_model_spec(str(_fake_model(tmp_path / "b", pooling={"mean_tokens": True})))
    key_a = onnx_export.model_key(a)
    assert key_a != onnx_export.model_key(b)
    assert "-a-" in key_a  # readable: the folder's name is in the key
    (tmp_path / "a" / "config.json").write_text((tmp_path / "a" / "config.json").read_text() + " ")
    assert onnx_export.model_key(a) != key_a
