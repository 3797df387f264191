"""Exporting a sentence-transformers model to ONNX: the graphs the ``onnx`` and ``onnx-int8``
backends (:mod:`rag.embeddings.onnx_runtime`) run.

A BERT-style sentence-transformers model (a Transformer module, then mean or CLS pooling,
then optional normalisation) is exported to ONNX once with torch, verified against torch,
and cached under ``cache_dir/<slug>-<hash>/`` (``cache_dir`` is one folder per user,
:func:`rag.config.models_dir`). Making a graph passes through these files::

    model.onnx                    the fp32 graph as torch exported it
    model-opt.onnx                the same after ONNX Runtime's transformer fusions
    model-int8-<recipe>.onnx      dynamic INT8 quantisation (see ``QuantRecipe``)

and only the graphs a backend loads stay (``onnx-int8``: its INT8 graph, 23 MB for the
default model with VNNI, 33 MB on AVX2; ``onnx``: the fused graph, or the plain one where
the fusions fail; ``openvino``: the plain one, and its compiled blobs in ``openvino/``),
with ``export.json`` (what was exported, from which files, with which versions, and which
graphs are kept) and an empty ``.lock``. The intermediates are made
again when another backend or recipe needs them. An export made from the same model folder
before its files were replaced (a reinstalled package), or by an older version of this
module (:data:`EXPORT_VERSION`), is deleted once the new one is made.

An export takes seconds, so it is announced on the ``rag.embeddings`` logger at INFO (what
is being made, then how long it took), for a command to show.

Torch and transformers are imported only while exporting; reading a model folder
(:func:`read_model_spec`) and finding a cached graph (:func:`prepare_onnx`) need neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.config import cpu_has_vnni, installed_versions
from rag.embeddings.models import quiet_transformers, resolve_model
from rag.errors import EmbeddingError, MissingDependencyError

logger = logging.getLogger("rag.embeddings")

#: Bump when the export or its file layout changes: a new version exports afresh (and the
#: older export of the same model folder is deleted as stale, :func:`_drop_stale`).
#: 2: intermediates deleted, the kept graphs listed in export.json's "served".
#: 3: no SkipLayerNormalization fusion (see :data:`DISABLED_ORT_FUSIONS`); signed INT8 weights
#:    per channel on CPUs with VNNI.
EXPORT_VERSION = 3
OPSET = 17
#: Packages whose versions ``export.json`` records.
_EXPORT_PACKAGES = ("torch", "transformers", "onnxruntime", "onnx")
#: Texts for checking an exported graph against its source (one long enough to truncate).
_PROBE_TEXTS = (
    "A man is eating food.",
    "ONNX Runtime executes the exported graph; " * 40,
    "Ünïcödé, emoji 🙂 and 数字 123.",
)


@dataclass(frozen=True)
class QuantRecipe:
    """How the INT8 graph is made with ``onnxruntime.quantization.quantize_dynamic``.

    ``exclude`` holds regular expressions over node names (torch's exporter names nodes by
    module path, e.g. ``/m/encoder/layer.5/output/dense/MatMul``); ``{last}`` stands for the
    last encoder layer's index. Matching nodes stay in fp32.
    """

    name: str
    #: Quantise the fused graph (``model-opt.onnx``) rather than the plain export.
    fused: bool = True
    weight_type: str = "qint8"
    per_channel: bool = False
    reduce_range: bool = False
    #: Operator types to quantise; empty means quantize_dynamic's default set.
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    activation_symmetric: bool = False

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:8]}"


#: For CPUs without VNNI (AVX2), chosen there by ``eval/quantization.py``: the fused graph,
#: UINT8 weights with per-channel scales (signed weights saturate AVX2's int16 products), and
#: the feed-forward output projections kept in fp32 (their GELU inputs have outliers that one
#: dynamic per-tensor activation scale handles badly; they cost the most quality).
AVX2_INT8_RECIPE = QuantRecipe(
    "u8-pc-keep-ffn2",
    weight_type="quint8",
    per_channel=True,
    exclude=(r"layer\.\d+/output/dense/",),
)
#: For CPUs with VNNI (AVX-512 VNNI, AVX-VNNI, AMX), where ONNX Runtime multiplies uint8
#: activations by int8 weights at full rate but runs uint8 x uint8 on a slow path: every
#: matrix product in INT8 (QAttention, DynamicQuantizeMatMul) with per-channel scales, which
#: hold the quality that per-tensor scales lose (mean cosine 0.995 against 0.936 to fp32).
VNNI_INT8_RECIPE = QuantRecipe("s8-pc", weight_type="qint8", per_channel=True)


def default_int8_recipe() -> QuantRecipe:
    """The INT8 recipe for this CPU: :data:`VNNI_INT8_RECIPE` or :data:`AVX2_INT8_RECIPE`."""
    return VNNI_INT8_RECIPE if cpu_has_vnni() else AVX2_INT8_RECIPE


#: The default on this machine (``eval/quantization.py``'s ``int8:default``).
DEFAULT_INT8_RECIPE = default_int8_recipe()
#: ONNX Runtime fusions left out, in the saved graph and in every session: with ONNX Runtime
#: 1.32 on CPU, SkipLayerNormalization took 17.5 ms on a (32, 256, 384) batch where
#: LayerNormalization and Add took 2.0 and about 2.3 (one thread), 15% of the INT8 graph's time.
DISABLED_ORT_FUSIONS = ("SkipLayerNormFusion",)


# --------------------------------------------------------------------------- model folder


@dataclass(frozen=True)
class ModelSpec:
    """What the ONNX backend needs to know about a sentence-transformers model folder."""

    model_id: str
    root: Path
    #: The folder of the Transformer module (config.json, tokenizer.json, weights).
    transformer_dir: Path
    pooling: str  # "mean" or "cls"
    normalize: bool
    max_seq_length: int
    do_lower_case: bool
    prompt: str
    dim: int

    def tokenizer(self) -> Any:
        """The model's fast tokenizer, truncating at :attr:`max_seq_length`, no padding."""
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(self.transformer_dir / "tokenizer.json"))
        # Set once here and never per call, so that threads can share the tokenizer.
        tok.enable_truncation(max_length=self.max_seq_length)
        tok.no_padding()
        return tok


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise EmbeddingError(f"cannot read {path}: {e}") from e


def _locate(model: str) -> tuple[str, Path]:
    model_id, location = resolve_model(model)
    path = Path(location)
    if path.is_dir():
        return model_id, path
    try:  # a hub name: only what is already in the local Hugging Face cache
        from huggingface_hub import snapshot_download

        return model_id, Path(snapshot_download(location, local_files_only=True))
    except Exception as e:
        raise EmbeddingError(
            f"could not find the embedding model {model!r} locally ({e}). Offline, give a "
            "local model folder with --embed-model (or RAG_EMBED_MODEL)"
        ) from e


def read_model_spec(model: str) -> ModelSpec:
    """Reads modules.json, the pooling config and sentence_bert_config.json of ``model``."""
    model_id, root = _locate(model)
    unsupported = (
        f"the ONNX backend supports sentence-transformers models made of a Transformer and "
        f"mean or CLS pooling; {model!r} is not one ({{}}): use --embed-backend torch"
    )
    modules = read_json(root / "modules.json")
    if not isinstance(modules, list) or not modules:
        raise EmbeddingError(unsupported.format("no modules.json"))
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[0] != "Transformer" or len(kinds) < 2 or kinds[1] != "Pooling":
        raise EmbeddingError(unsupported.format(f"modules {kinds}"))
    if any(k != "Normalize" for k in kinds[2:]):
        raise EmbeddingError(unsupported.format(f"modules {kinds}"))
    transformer_dir = root / modules[0].get("path", "")
    pool = read_json(root / modules[1].get("path", "1_Pooling") / "config.json")
    if isinstance(pool.get("pooling_mode"), str):
        modes = {pool["pooling_mode"]}
    else:
        modes = {
            k.removeprefix("pooling_mode_")
            for k, v in pool.items()
            if k.startswith("pooling_mode_") and v
        }
    modes = {
        "mean" if m in ("mean_tokens", "mean") else "cls" if m in ("cls_token", "cls") else m
        for m in modes
    }
    if len(modes) != 1 or not modes <= {"mean", "cls"} or pool.get("include_prompt") is False:
        raise EmbeddingError(unsupported.format(f"pooling {sorted(modes)}"))
    sbert = read_json(transformer_dir / "sentence_bert_config.json")
    config = read_json(transformer_dir / "config.json")
    tok_config = read_json(transformer_dir / "tokenizer_config.json")
    if not (transformer_dir / "tokenizer.json").is_file():
        raise EmbeddingError(unsupported.format("no tokenizer.json"))
    max_len = sbert.get("max_seq_length")
    if not max_len:
        limits = [config.get("max_position_embeddings"), tok_config.get("model_max_length")]
        max_len = min(int(v) for v in limits if isinstance(v, int | float) and v < 10**6)
    st_config = read_json(root / "config_sentence_transformers.json")
    prompt = ""
    if st_config.get("default_prompt_name"):
        prompt = str(st_config.get("prompts", {}).get(st_config["default_prompt_name"], ""))
    dim = pool.get("word_embedding_dimension") or config.get("hidden_size")
    if not dim:
        raise EmbeddingError(unsupported.format("no embedding dimension"))
    return ModelSpec(
        model_id=model_id,
        root=root,
        transformer_dir=transformer_dir,
        pooling=modes.pop(),
        normalize=True,  # the Embedder contract: unit vectors, as the torch backend gives
        max_seq_length=int(max_len),
        do_lower_case=bool(sbert.get("do_lower_case", False)),
        prompt=prompt,
        dim=int(dim),
    )


def model_key(spec: ModelSpec) -> str:
    """``<slug>-<hash>``: readable, and distinct for every model folder and file version."""
    h = hashlib.sha256(f"v{EXPORT_VERSION}\0{spec.root.resolve()}\0{spec.max_seq_length}".encode())
    for path in sorted(p for p in spec.root.rglob("*") if p.is_file() and ".git" not in p.parts):
        st = path.stat()
        h.update(f"{path.relative_to(spec.root)}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    slug = re.sub(r"[^a-z0-9]+", "-", "-".join(Path(spec.model_id).parts[-2:]).lower()).strip("-")
    return f"{slug[:60] or 'model'}-{h.hexdigest()[:12]}"


# --------------------------------------------------------------------------- export


@contextlib.contextmanager
def file_lock(folder: Path, *, waiting: Callable[[], None] | None = None) -> Iterator[None]:
    """Serialises exports of one model between processes (threads have load_embedder's lock).
    ``waiting`` is called when another process holds the lock, before waiting for it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / ".lock", "a+b")  # noqa: SIM115 (closed below)
    except OSError as e:
        raise EmbeddingError(
            f"cannot write the model cache {folder.parent}: {e.strerror or e}; "
            "set RAG_MODELS_DIR to a folder this user can write"
        ) from e
    with fh:
        try:
            import fcntl
        except ImportError:  # no flock (Windows): atomic renames still keep the files whole
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                waiting()
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _temp_path(dest: Path) -> Path:
    # Unique per process and call; created by its writer, so the umask applies as usual.
    return dest.with_name(f".{dest.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.onnx")


def onnx_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session over ``path`` with ``threads`` intra-op threads.

    Here rather than in :mod:`~rag.embeddings.onnx_runtime` because every graph this module
    writes is checked by running it, and the runtime module builds on this one.
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(
            str(path),
            so,
            providers=["CPUExecutionProvider"],
            disabled_optimizers=list(DISABLED_ORT_FUSIONS),
        )
    except Exception as e:
        raise EmbeddingError(f"onnxruntime cannot load {path}: {e}") from e


def _run_hidden(session: Any, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in {i.name for i in session.get_inputs()}:
        feed["token_type_ids"] = np.zeros_like(ids)
    return session.run(None, feed)[0]


def _probe_batch(spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    tok = spec.tokenizer()
    encs = tok.encode_batch(list(_PROBE_TEXTS))
    n = max(len(e.ids) for e in encs)
    ids = np.zeros((len(encs), n), dtype=np.int64)
    mask = np.zeros_like(ids)
    for row, e in enumerate(encs):
        ids[row, : len(e.ids)] = e.ids
        mask[row, : len(e.ids)] = 1
    return ids, mask


def _max_diff(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs((a - b) * mask[..., None]).max())


def export_onnx(spec: ModelSpec, dest: Path) -> None:
    """Exports the Transformer module of ``spec`` to ``dest`` with torch and checks the graph
    against torch on a padded probe batch. Writes a temporary file and renames it."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as e:
        raise MissingDependencyError("exporting a model to ONNX", e.name or "torch", "all") from e
    quiet_transformers()
    try:
        model = AutoModel.from_pretrained(
            str(spec.transformer_dir), attn_implementation="eager", local_files_only=True
        )
    except Exception as e:
        raise EmbeddingError(
            f"cannot load {spec.model_id!r} with transformers to export it: {e}"
        ) from e
    import inspect

    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs, strict=True))).last_hidden_state

    # eval() on the wrapper: the exporter restores the wrapper's training flag afterwards.
    wrapper = _Hidden(model).eval()
    ids, mask = _probe_batch(spec)
    args = tuple(torch.from_numpy(a) for a in (ids, mask, np.zeros_like(ids))[: len(names)])
    tmp = _temp_path(dest)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = wrapper(*args).numpy()
            try:  # the TorchScript exporter gives graphs ONNX Runtime's fusions recognise
                torch.onnx.export(
                    wrapper,
                    args,
                    str(tmp),
                    dynamo=False,
                    opset_version=OPSET,
                    input_names=names,
                    output_names=["last_hidden_state"],
                    dynamic_axes={
                        n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]
                    },
                    do_constant_folding=True,
                )
            except (TypeError, RuntimeError, AttributeError):  # a torch without it
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=4096)
                torch.onnx.export(
                    wrapper,
                    args,
                    str(tmp),
                    dynamo=True,
                    opset_version=OPSET,
                    input_names=names,
                    output_names=["last_hidden_state"],
                    dynamic_shapes=[{0: batch, 1: seq} for _ in names],
                    external_data=False,
                )
        got = _run_hidden(onnx_session(tmp, 1), ids, mask)
        if got.shape != expected.shape or _max_diff(got, expected, mask) > 1e-3:
            diff = _max_diff(got, expected, mask) if got.shape == expected.shape else float("nan")
            raise EmbeddingError(
                f"the ONNX export of {spec.model_id!r} does not reproduce torch's output "
                f"(max difference {diff:.2g}): use --embed-backend torch"
            )
        os.replace(tmp, dest)
    except EmbeddingError:
        raise
    except ImportError as e:
        raise MissingDependencyError("exporting a model to ONNX", e.name or "onnx", "onnx") from e
    except Exception as e:
        raise EmbeddingError(f"cannot export {spec.model_id!r} to ONNX: {e}") from e
    finally:
        tmp.unlink(missing_ok=True)


def fuse_onnx(spec: ModelSpec, src: Path, dest: Path) -> bool:
    """Applies ONNX Runtime's transformer fusions (embedding and attention, GELU with its bias;
    not those in :data:`DISABLED_ORT_FUSIONS`) to ``src``.
    Returns False, leaving no file, when they fail or change the output."""
    config = read_json(spec.transformer_dir / "config.json")
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    if not heads or not hidden:
        return False
    tmp = _temp_path(dest)
    try:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        options.enable_skip_layer_norm = "SkipLayerNormFusion" not in DISABLED_ORT_FUSIONS
        with warnings.catch_warnings(), quiet_logging():
            warnings.simplefilter("ignore")
            fused = optimize_model(
                str(src),
                model_type="bert",
                num_heads=int(heads),
                hidden_size=int(hidden),
                opt_level=0,
                optimization_options=options,
            )
            fused.save_model_to_file(str(tmp))
        ids, mask = _probe_batch(spec)
        diff = _max_diff(
            _run_hidden(onnx_session(tmp, 1), ids, mask),
            _run_hidden(onnx_session(src, 1), ids, mask),
            mask,
        )
        if diff > 1e-3:
            return False
        os.replace(tmp, dest)
        return True
    except Exception:  # the fusions are an optimisation: the plain graph serves instead
        return False
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_logging(name: str | None = None, level: int = logging.ERROR) -> Iterator[None]:
    """Raises the logger ``name`` (the root logger when None) to ``level`` for a while:
    the exporting and quantising libraries log tables and chatter on their own loggers."""
    target = logging.getLogger(name)
    before = target.level
    target.setLevel(level)
    try:
        yield
    finally:
        target.setLevel(before)


def quantize_onnx(spec: ModelSpec, src: Path, dest: Path, recipe: QuantRecipe) -> None:
    """Dynamic INT8 quantisation of ``src`` into ``dest`` following ``recipe``."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:
        raise MissingDependencyError(
            "the onnx-int8 embedding backend", e.name or "onnx", "onnx"
        ) from e
    layers = int(read_json(spec.transformer_dir / "config.json").get("num_hidden_layers", 0))
    patterns = [re.compile(p.replace("{last}", str(max(layers - 1, 0)))) for p in recipe.exclude]
    graph = onnx.load(str(src), load_external_data=False).graph
    excluded = [n.name for n in graph.node if any(p.search(n.name) for p in patterns)]
    tmp = _temp_path(dest)
    try:
        with warnings.catch_warnings(), quiet_logging():
            warnings.simplefilter("ignore")
            quantize_dynamic(
                str(src),
                str(tmp),
                op_types_to_quantize=list(recipe.op_types) or None,
                per_channel=recipe.per_channel,
                reduce_range=recipe.reduce_range,
                weight_type=QuantType.QUInt8 if recipe.weight_type == "quint8" else QuantType.QInt8,
                nodes_to_exclude=excluded or None,
                extra_options={
                    "ActivationSymmetric": recipe.activation_symmetric,
                    # shape inference cannot type the outputs of fused (com.microsoft) ops
                    "DefaultTensorType": onnx.TensorProto.FLOAT,
                },
            )
        os.replace(tmp, dest)
    except Exception as e:
        raise EmbeddingError(
            f"cannot quantise {spec.model_id!r} to INT8 ({recipe.name}): {e}"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def prepare_onnx(
    spec: ModelSpec,
    cache_dir: Path,
    *,
    quantized: bool,
    recipe: QuantRecipe = DEFAULT_INT8_RECIPE,
    keep_intermediates: bool = False,
    serve_plain: bool = False,
) -> Path:
    """The cached graph for ``spec``: exported, fused and quantised as needed, once per
    ``cache_dir`` (concurrent processes wait for one another on a file lock).

    Afterwards only the graphs some backend loads are left in the model's folder (the one
    returned, and those earlier calls returned); ``keep_intermediates`` also keeps
    ``model.onnx`` and ``model-opt.onnx``, for tools that compare them
    (``eval/quantization.py``). ``serve_plain`` serves ``model.onnx`` itself, for runtimes other
    than ONNX Runtime (the fused graph's operators are ONNX Runtime's own). The work is
    announced on the ``rag.embeddings`` logger.
    """
    folder = cache_dir / model_key(spec)
    plain, fused = folder / "model.onnx", folder / "model-opt.onnx"
    int8 = folder / f"model-int8-{recipe.key}.onnx"

    def ready() -> Path | None:
        info = read_json(folder / "export.json")
        if keep_intermediates and not plain.is_file():
            return None
        if serve_plain:
            served = plain.name in info.get("served", [])
            return plain if served and plain.is_file() else None
        if quantized:
            return int8 if int8.is_file() else None
        if "fused" in info:
            served = fused if info["fused"] else plain
            return served if served.is_file() else None
        return None

    if (done := ready()) is not None:
        return done
    name = Path(spec.model_id).name
    variant = "int8" if quantized else "fp32, plain" if serve_plain else "fp32"

    def waiting() -> None:
        logger.info("waiting for another process exporting %s to ONNX…", name)

    with file_lock(folder, waiting=waiting):
        if (done := ready()) is not None:  # another process made it while this one waited
            return done
        logger.info("exporting %s to ONNX (%s), once per machine…", name, variant)
        started = time.perf_counter()
        info = read_json(folder / "export.json")
        served = set(info.get("served", []))

        def plain_graph() -> Path:
            if not plain.is_file():
                t0 = time.perf_counter()
                export_onnx(spec, plain)
                info.update(
                    model_id=spec.model_id,
                    source=str(spec.root),
                    export_version=EXPORT_VERSION,
                    opset=OPSET,
                    export_seconds=round(time.perf_counter() - t0, 2),
                    versions=installed_versions(_EXPORT_PACKAGES),
                )
            return plain

        def fp32_graph() -> Path:  # what the onnx backend runs: fused where the fusions apply
            if info.get("fused") is True and fused.is_file():
                return fused
            if info.get("fused") is False:
                return plain_graph()
            info["fused"] = fuse_onnx(spec, plain_graph(), fused)
            return fused if info["fused"] else plain

        try:
            if keep_intermediates:
                plain_graph()
            if serve_plain:
                target = plain_graph()
            elif quantized:
                source = fp32_graph() if recipe.fused else plain_graph()
                quantize_onnx(spec, source, int8, recipe)
                target = int8
            else:
                target = fp32_graph()
            served.add(target.name)
            info["served"] = sorted(served)
            write_json(folder / "export.json", info)
        finally:
            if not keep_intermediates:
                _prune(folder, served)
        _drop_stale(folder, spec)
        logger.info(
            "exported %s to ONNX (%s) in %.1f s, cached in %s",
            name,
            variant,
            time.perf_counter() - started,
            cache_dir,
        )
        return target


def _drop_stale(folder: Path, spec: ModelSpec) -> None:
    """Deletes the exports of the same model folder made from files since replaced (a
    reinstalled package: the key changed), which nothing can load again. One that another
    process holds locked, exporting, is left alone."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock to tell whether someone is using it
        return
    source = str(spec.root)
    for other in folder.parent.iterdir():
        if other == folder or not (other / "export.json").is_file():
            continue
        try:
            info = read_json(other / "export.json")
        except EmbeddingError:  # unreadable: not known to be stale
            continue
        if not isinstance(info, dict) or info.get("source") != source:
            continue
        try:
            with open(other / ".lock", "a+b") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                for path in other.iterdir():
                    if path.is_dir():  # a runtime's compiled blobs (the openvino backend's)
                        shutil.rmtree(path)
                    elif path.name != ".lock":
                        path.unlink(missing_ok=True)
                (other / ".lock").unlink(missing_ok=True)
            other.rmdir()
        except OSError:  # locked, or not ours to delete: it stays
            continue


def _prune(folder: Path, served: set[str]) -> None:
    """Deletes the graphs no backend loads, and temporary files that exports killed midway
    left behind (the caller holds the folder's lock, so no other process is writing)."""
    for path in folder.iterdir():
        if (
            (path.suffix == ".onnx" and path.name not in served)
            or path.name.endswith(".tmp")
            or path.name.startswith(".model-int8-ov-")  # openvino-int8's, killed midway
        ):
            path.unlink(missing_ok=True)


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
