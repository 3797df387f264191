"""ONNX embedding variants against torch: speed, query latency, vector quality, file size.

Embeds the same SciFact passages (title + " " + abstract, corpus order) with torch fp32, the
ONNX fp32 graphs, several dynamic-INT8 recipes, OpenVINO (the plain fp32 graph, in the
precision OpenVINO picks for the CPU) and OpenVINO INT8 (NNCF's static quantisation of that
graph, ``openvino-int8``), in one process; the variants take turns
chunk by chunk (and query by query), so that load from other work falls on all of them
alike. Speed is the median of the rounds' wall times (and CPU times, which load disturbs
less). Quality is measured against the first round's vectors of the reference (torch when
it is among the variants, else the first one): mean and minimum cosine, and top-10 neighbour
overlap (each passage's ten nearest passages within the set). Writes JSON (one section per
run) and prints a markdown table::

    .venv/bin/python -m eval.quantization --passages 2000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from eval.datasets import load_beir
from rag.config import DEFAULT_EMBED_MODEL
from rag.embeddings import Embedder
from rag.embeddings.models import resolve_model
from rag.embeddings.onnx_export import (
    AVX2_INT8_RECIPE,
    DEFAULT_INT8_RECIPE,
    VNNI_INT8_RECIPE,
    QuantRecipe,
    onnx_session,
)
from rag.embeddings.onnx_runtime import OnnxEmbedder
from rag.embeddings.openvino_runtime import OpenVinoEmbedder
from rag.embeddings.transformer import SentenceTransformerEmbedder

ROOT = Path(__file__).resolve().parent.parent

#: Recipes this study compares (``DEFAULT_INT8_RECIPE`` is one of the last two, by the CPU's
#: VNNI; ``int8:default`` names it). Names: ``plain``
#: quantises the graph as torch exported it, ``fused`` the graph after ONNX Runtime's
#: transformer fusions; ``u8``/``s8`` the weight type; ``pc`` per-channel weight scales;
#: ``rr`` 7-bit weights (reduce_range); ``keep-X`` leaves nodes X in fp32.
_U8_PC = {"weight_type": "quint8", "per_channel": True}
RECIPES: dict[str, QuantRecipe] = {
    r.name: r
    for r in (
        QuantRecipe("plain-s8", fused=False),  # quantize_dynamic's defaults
        QuantRecipe("plain-u8", fused=False, weight_type="quint8"),
        QuantRecipe("fused-s8"),
        QuantRecipe("fused-u8", weight_type="quint8"),
        QuantRecipe("fused-s8-rr", reduce_range=True),
        QuantRecipe("fused-s8-pc", per_channel=True),
        QuantRecipe("fused-s8-pc-rr", per_channel=True, reduce_range=True),
        QuantRecipe("fused-u8-pc", **_U8_PC),
        QuantRecipe("fused-u8-mm", weight_type="quint8", op_types=("MatMul",)),
        QuantRecipe("u8-pc-keep-qkv", exclude=(r"^Attention_\d+$",), **_U8_PC),
        QuantRecipe("u8-pc-keep-attn-out", exclude=(r"attention/output/dense/",), **_U8_PC),
        QuantRecipe("u8-pc-keep-ffn1", exclude=(r"intermediate/dense/",), **_U8_PC),
        QuantRecipe("u8-pc-keep-first", exclude=(r"^Attention_0$", r"layer\.0/"), **_U8_PC),
        QuantRecipe(
            "u8-pc-keep-last", exclude=(r"^Attention_{last}$", r"layer\.{last}/"), **_U8_PC
        ),
        QuantRecipe("u8-pc-keep-ffn2-0-2", exclude=(r"layer\.[0-2]/output/dense/",), **_U8_PC),
        QuantRecipe(
            "u8-pc-keep-ffn2-first",
            exclude=(r"layer\.\d+/output/dense/", r"^Attention_0$", r"layer\.0/"),
            **_U8_PC,
        ),
        AVX2_INT8_RECIPE,
        VNNI_INT8_RECIPE,
    )
}
DEFAULT_VARIANTS = (
    "torch",
    "onnx-plain",
    "onnx",
    "int8:plain-s8",
    "int8:fused-u8-pc",
    "int8:u8-pc-keep-ffn2-0-2",
    "int8:default",
)


def passages(dataset: Path, n: int) -> list[str]:
    ds = load_beir(dataset)
    return [ds.doc_text(doc_id) for doc_id in list(ds.corpus)[:n]]


def queries(dataset: Path, n: int) -> list[str]:
    ds = load_beir(dataset)
    return list(ds.queries.values())[:n]


def neighbours(vecs: np.ndarray, k: int = 10) -> np.ndarray:
    sims = vecs @ vecs.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    k = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def make_variant(
    name: str, *, cache_dir: Path, batch_size: int
) -> tuple[Callable[[], Embedder], Callable[[Embedder], int]]:
    """(build, file size) for a variant name: ``torch``, ``onnx``, ``onnx-plain``,
    ``int8:<recipe>`` (``int8:default`` is ``DEFAULT_INT8_RECIPE``), ``openvino``; ``@<n>``
    sets the batch."""
    base, _, bs = name.partition("@")
    batch = int(bs) if bs else batch_size
    if base == "torch":
        weights = Path(resolve_model(DEFAULT_EMBED_MODEL)[1]) / "model.safetensors"
        return (
            lambda: SentenceTransformerEmbedder(DEFAULT_EMBED_MODEL, batch_size=batch),
            lambda e: weights.stat().st_size,
        )

    def size(e: Embedder) -> int:
        path = Path(e.path)  # type: ignore[attr-defined]
        weights = path.with_suffix(".bin") if path.suffix == ".xml" else None  # OpenVINO IR
        return path.stat().st_size + (weights.stat().st_size if weights else 0)

    if base in ("onnx", "onnx-plain"):

        def build() -> Embedder:
            emb = OnnxEmbedder(
                DEFAULT_EMBED_MODEL,
                batch_size=batch,
                cache_dir=cache_dir,
                keep_intermediates=base == "onnx-plain",  # the plain graph is an intermediate
            )
            if base == "onnx-plain":  # the graph as exported, before the transformer fusions
                emb.path = emb.path.parent / "model.onnx"
                emb._session = onnx_session(emb.path, emb.threads)
            return emb

        return build, size
    if base.split(":")[0] in ("openvino", "openvino-int8"):
        # openvino[-int8]:<precision> pins OpenVINO's inference precision (f32, bf16, f16).
        kind, _, precision = base.partition(":")
        config = {"INFERENCE_PRECISION_HINT": precision} if precision else None
        return (
            lambda: OpenVinoEmbedder(
                DEFAULT_EMBED_MODEL,
                quantized=kind == "openvino-int8",
                batch_size=batch,
                cache_dir=cache_dir,
                config=config,
            ),
            size,
        )
    if base.startswith("int8:"):
        key = base.split(":", 1)[1]
        recipe = DEFAULT_INT8_RECIPE if key == "default" else RECIPES[key]
        return (
            lambda: OnnxEmbedder(
                DEFAULT_EMBED_MODEL,
                quantized=True,
                recipe=recipe,
                batch_size=batch,
                cache_dir=cache_dir,
            ),
            size,
        )
    raise SystemExit(f"unknown variant {name!r}")


def run(
    dataset: Path,
    *,
    n_passages: int,
    n_queries: int,
    repeats: int,
    variants: Sequence[str],
    cache_dir: Path,
    batch_size: int,
    chunk: int = 64,
) -> dict[str, Any]:
    texts = passages(dataset, n_passages)
    claims = queries(dataset, n_queries)
    built: dict[str, Embedder] = {}
    sizes: dict[str, int] = {}
    prepare_s: dict[str, float] = {}
    for name in variants:
        build, size = make_variant(name, cache_dir=cache_dir, batch_size=batch_size)
        started = time.perf_counter()
        built[name] = build()
        prepare_s[name] = time.perf_counter() - started
        sizes[name] = size(built[name])
        built[name].embed_query("warm up")
        print(f"prepared {name} in {prepare_s[name]:.1f}s", file=sys.stderr, flush=True)
    tokens = built[variants[0]].count_tokens(texts)
    limit = built[variants[0]].max_tokens
    vecs: dict[str, np.ndarray] = {}
    seconds: dict[str, list[float]] = {n: [] for n in variants}
    latency: dict[str, list[float]] = {n: [] for n in variants}
    load = [os.getloadavg()[0]]
    cpu: dict[str, list[float]] = {n: [] for n in variants}
    # Variants take turns chunk by chunk (in a rotating order), so that background load, which
    # changes from second to second on a shared machine, falls on all of them alike.
    starts = range(0, len(texts), chunk)
    for rep in range(repeats):
        wall = dict.fromkeys(variants, 0.0)
        used = dict.fromkeys(variants, 0.0)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in variants}
        for i, start in enumerate(starts):
            turn = variants[i % len(variants) :] + variants[: i % len(variants)]
            for name in turn:
                c0, t0 = time.process_time(), time.perf_counter()
                parts[name].append(built[name].embed(texts[start : start + chunk]))
                wall[name] += time.perf_counter() - t0
                used[name] += time.process_time() - c0
        for j, q in enumerate(claims):
            turn = variants[j % len(variants) :] + variants[: j % len(variants)]
            for name in turn:
                t0 = time.perf_counter()
                built[name].embed_query(q)
                latency[name].append(time.perf_counter() - t0)
        for name in variants:
            seconds[name].append(wall[name])
            cpu[name].append(used[name])
            vecs.setdefault(name, np.concatenate(parts[name]))
        load.append(os.getloadavg()[0])
        print(
            f"round {rep + 1}/{repeats}: "
            + ", ".join(f"{n} {len(texts) / seconds[n][-1]:.1f}/s" for n in variants),
            file=sys.stderr,
            flush=True,
        )
    ref_name = "torch" if "torch" in vecs else variants[0]
    ref = vecs[ref_name]
    ref_nn = neighbours(ref)
    rows = []
    for name in variants:
        cos = (vecs[name] * ref).sum(axis=1)
        rate = len(texts) / statistics.median(seconds[name])
        emb = built[name]
        recipe = getattr(emb, "recipe", None)
        rows.append(
            {
                "variant": name,
                "backend": emb.backend,
                "recipe": asdict(recipe) if recipe else None,
                "precision": getattr(emb, "precision", None),
                "passages_per_s": round(rate, 2),
                "passages_per_s_runs": [round(len(texts) / s, 2) for s in seconds[name]],
                "passages_per_cpu_s": round(len(texts) / statistics.median(cpu[name]), 2),
                "query_p50_ms": _ms(latency[name], 50),
                "query_p90_ms": _ms(latency[name], 90),
                "mean_cos": round(float(cos.mean()), 5),
                "min_cos": round(float(cos.min()), 5),
                "top10_overlap": round(overlap(neighbours(vecs[name]), ref_nn), 4),
                "file_mb": round(sizes[name] / 1e6, 1),
                "prepare_s": round(prepare_s[name], 1),
            }
        )
    base = next(r for r in rows if r["variant"] == ref_name)
    for r in rows:
        r["speed_vs_ref"] = round(r["passages_per_s"] / base["passages_per_s"], 2)
        if r["query_p50_ms"] and base["query_p50_ms"]:
            r["query_speedup_vs_ref"] = round(base["query_p50_ms"] / r["query_p50_ms"], 2)
    return {
        "command": "python -m eval.quantization " + shlex.join(sys.argv[1:]),
        "reference": ref_name,
        "default_int8_recipe": asdict(DEFAULT_INT8_RECIPE),
        "passages": len(texts),
        "mean_tokens": round(float(np.mean(tokens)), 1),
        "mean_tokens_embedded": round(float(np.mean(np.minimum(tokens, limit))), 1),
        "truncated_fraction": round(float(np.mean(np.asarray(tokens) > limit)), 3),
        "queries": len(claims),
        "repeats": repeats,
        "chunk": chunk,
        "batch_size": batch_size,
        "host": host_info(built),
        "default_int8_recipe_name": DEFAULT_INT8_RECIPE.name,
        "load_average_1m": [round(x, 2) for x in load],
        "results": rows,
    }


def _ms(seconds: list[float], pct: float) -> float | None:
    return round(1000 * float(np.percentile(seconds, pct)), 2) if seconds else None


def host_info(built: dict[str, Embedder]) -> dict[str, Any]:
    import onnxruntime

    threads = {getattr(e, "threads", None) for e in built.values()} - {None}
    info = {**cpu_info(), "onnx_threads": sorted(threads), "onnxruntime": onnxruntime.__version__}
    if any(e.backend == "openvino" for e in built.values()):
        import openvino

        info["openvino"] = openvino.__version__.split("-")[0]
    return info


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the instruction sets that decide INT8 speed, from
    ``/proc/cpuinfo``; printed beside every speed figure."""
    cpu, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line
    except OSError:
        pass
    isa = [
        f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in flags
    ]
    return {
        "cpu": cpu or platform.processor(),
        "isa": isa,
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def attach_ndcg(result: dict[str, Any], spec: str) -> None:
    """Adds SciFact dense nDCG@10 to the rows from ``rag eval retrieval`` result files:
    ``spec`` is ``variant=path,...`` (the files record the backend they measured)."""
    rows = {r["variant"]: r for r in result["results"]}
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, path = item.partition("=")
        if name not in rows:
            raise SystemExit(f"--ndcg names {name!r}, which is not among the variants")
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        rows[name]["ndcg@10"] = data["modes"]["dense"]["ndcg@10"]
        rows[name]["ndcg_file"] = path
        rows[name]["ndcg_backend"] = data.get("embed_backend")
    ref = rows.get(result["reference"], {}).get("ndcg@10")
    for r in rows.values():
        if ref is not None and "ndcg@10" in r:
            r["ndcg_vs_ref"] = round(r["ndcg@10"] - ref, 4)


def markdown(result: dict[str, Any]) -> str:
    ref = result["reference"]
    host = result["host"]
    lines = [
        f"CPU: {host['cpu']}; flags {' '.join(host['isa']) or 'none of interest'}; "
        f"{host['logical_cpus']} logical CPUs, ONNX threads {host['onnx_threads']}, "
        f"onnxruntime {host['onnxruntime']}"
        + (f", openvino {host['openvino']}" if "openvino" in host else "")
        + "; default INT8 recipe "
        f"{result.get('default_int8_recipe_name', '?')}; load average "
        f"{result['load_average_1m']}",
        "",
        f"| variant | passages/s | x {ref} | passages/CPU-s | x {ref} (CPU) | query p50 ms "
        "| mean cos | min cos | top-10 overlap | SciFact nDCG@10 | file MB |",
        "|" + "---|" * 11,
    ]
    base_cpu = next(r for r in result["results"] if r["variant"] == ref)["passages_per_cpu_s"]
    for r in result["results"]:
        ndcg = f"{r['ndcg@10']:.4f}" if "ndcg@10" in r else "-"
        if "ndcg_vs_ref" in r and r["variant"] != ref:
            ndcg += f" ({r['ndcg_vs_ref']:+.4f})"
        lines.append(
            f"| {r['variant']} | {r['passages_per_s']:.1f} | {r['speed_vs_ref']:.2f} "
            f"| {r['passages_per_cpu_s']:.1f} | {r['passages_per_cpu_s'] / base_cpu:.2f} "
            f"| {r['query_p50_ms'] or '-'} | {r['mean_cos']:.4f} | {r['min_cos']:.4f} "
            f"| {r['top10_overlap']:.3f} | {ndcg} | {r['file_mb']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", type=Path, default=ROOT.parent / "shared" / "datasets" / "scifact")
    p.add_argument("--passages", type=int, default=2000)
    p.add_argument("--queries", type=int, default=100, help="claims timed one by one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument(
        "--chunk", type=int, default=64, help="passages per turn when the variants alternate"
    )
    p.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help="comma-separated: torch, onnx, onnx-plain, openvino[-int8][:<precision>], "
        "int8:<recipe> "
        f"({', '.join(RECIPES)}, default); append @N for batch size N",
    )
    p.add_argument("--cache-dir", type=Path, default=ROOT / "eval" / "cache" / "models")
    p.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "quantization.json")
    p.add_argument(
        "--section",
        default="main",
        help="the key this run is stored under in --out; runs under other keys are kept",
    )
    p.add_argument(
        "--ndcg",
        default="",
        help="variant=path,...: SciFact dense nDCG@10 from `rag eval retrieval --out` files, "
        "shown beside the speed (e.g. torch=eval/results/retrieval-scifact-faiss-torch.json)",
    )
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = run(
        args.dataset,
        n_passages=args.passages,
        n_queries=args.queries,
        repeats=args.repeats,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        chunk=args.chunk,
    )
    if args.ndcg:
        attach_ndcg(result, args.ndcg)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(args.out.read_text()).get("runs", {}) if args.out.is_file() else {}
    runs[args.section] = result
    args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n", encoding="utf-8")
    print(markdown(result))
    print(f"\n{result['command']}; written to {args.out} under {args.section!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
