"""Datasets for the vector-store benchmark: vectors, queries and exact ground truth.

Three sources, all turned into the same cached form:

* ``synthetic``: a clustered mixture on the unit sphere, any size and dimension, fixed
  seeds (:func:`synthetic_block`). Cluster count scales with N (``N / 1000``, at least 10).
  Each cluster has a unit centroid sharing a common direction with the others (as sentence
  embeddings do: random pairs are not orthogonal), a log-normal weight and spread, and
  scatters its points in a random rank-16 subspace of its own plus isotropic noise; every
  point is normalised. The low-rank subspace gives the clusters the local intrinsic
  dimension of sentence embeddings: pure isotropic noise in 384 dimensions makes every
  neighbour nearly equidistant, far harder for HNSW than text. The constants below were
  calibrated against all-MiniLM-L6-v2 embeddings of SciFact (8,192 passages, the claims as
  queries): median LID over 20 neighbours 22.0 vs 20.7 real, relative contrast 1.68 vs
  1.54, HNSW (M8, efC40) recall@10 at ef 10/20/40 of 0.763/0.870/0.926 vs 0.792/0.884/0.944;
  each dataset's ``info.json`` records its LID and contrast, and the report compares
  recall curves at the benchmark's own settings. Queries come from the same mixture, drawn
  from another seed stream, so none is in the base set. Row ``i`` depends only on
  ``(seed, dim, clusters, i)``.
* ``scifact``: real MiniLM embeddings of SciFact's abstracts cut into passages (titles,
  sentences, and windows of two consecutive sentences: about 90k short passages from the
  5,183 abstracts), embedded once with ragkit's embedder and cached; queries are SciFact's
  1,109 claims. A size-N dataset is the first N passages of a fixed shuffle (seed 0,
  whatever ``--seed`` is, so that the embeddings are computed once).
* ``hdf5:PATH``: the ann-benchmarks format (``train``, ``test``; ``neighbors`` is ignored
  because vectors are normalised for cosine stores and ground truth is recomputed). A
  size-N dataset is the first N rows of ``train``.

Every dataset at a given N is cached under ``cache_dir/<key>/`` as ``.npy`` files: the
normalised base vectors, the queries, and exact top-``GT_K`` neighbours by inner product
computed with FAISS (``IndexFlatIP``, base scanned in blocks so memory stays flat), for the
whole set and for the two filtered subsets (rows with ``i % 100 == 7``: 1%;
``i % 100 < 10``: 10%). ``info.json`` is written last and marks the entry complete.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag.errors import ConfigError

GT_K = 100
BLOCK = 100_000  # rows per ground-truth scan block and per write
GEN_BLOCK = 10_000  # synthetic rows per seed block
SUB_RANK = 16  # rank of each cluster's subspace
SUB_SCALE = 1.2  # spread along the subspace (norm of the in-subspace offset ~ SUB_SCALE)
ISO_SCALE = 0.7  # isotropic noise (norm of the noise vector ~ ISO_SCALE)
MEAN_SHIFT = 0.6  # norm of the direction all centroids share
WEIGHT_SIGMA = 0.5  # log-normal sigma of cluster weights
SPREAD_SIGMA = 0.3  # log-normal sigma of cluster spreads
POINTS_PER_CLUSTER = 1000
#: Bumped whenever the generator changes, so that cached datasets are not reused.
GENERATOR_VERSION = 2
DEFAULT_QUERIES = 1000
DEFAULT_SEED = 42

# The two filters of the filtered-search phase: name -> (metadata filter, row predicate).
FILTERS: dict[str, tuple[dict[str, Any], Callable[[np.ndarray], np.ndarray]]] = {
    "1%": ({"bucket": 7}, lambda rows: rows % 100 == 7),
    "10%": ({"bucket": {"$lt": 10}}, lambda rows: rows % 100 < 10),
}


def bucket(row: int) -> int:
    """The ``bucket`` metadata value of row ``row`` (what the filters select on)."""
    return row % 100


@dataclass(frozen=True)
class Dataset:
    """One cached dataset at one size; arrays are opened lazily (memory-mapped)."""

    key: str
    name: str
    n: int
    dim: int
    folder: Path
    info: dict[str, Any]

    @property
    def base_path(self) -> Path:
        return self.folder / "base.npy"

    def queries(self) -> np.ndarray:
        return np.load(self.folder / "queries.npy")

    def truth(self, which: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """``(ids, scores)`` of the exact top-``GT_K`` per query; ``which`` is ``all`` or a
        key of :data:`FILTERS`."""
        tag = {"all": "all", "1%": "f1", "10%": "f10"}[which]
        return (
            np.load(self.folder / f"gt_{tag}_ids.npy"),
            np.load(self.folder / f"gt_{tag}_scores.npy"),
        )

    def base(self) -> np.ndarray:
        """The base vectors, memory-mapped (read-only)."""
        return np.load(self.base_path, mmap_mode="r")

    def iter_base(self, batch: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(first_row, vectors)`` in batches, read with plain file reads rather than a
        memory map, so the pages never count in the reading process's RSS."""
        shape, offset = npy_layout(self.base_path)
        if shape != (self.n, self.dim):
            raise ConfigError(f"{self.base_path}: shape {shape}, expected {(self.n, self.dim)}")
        row_bytes = self.dim * 4
        with open(self.base_path, "rb") as f:
            for start in range(0, self.n, batch):
                rows = min(batch, self.n - start)
                buf = os.pread(f.fileno(), rows * row_bytes, offset + start * row_bytes)
                yield start, np.frombuffer(buf, dtype=np.float32).reshape(rows, self.dim)


def npy_layout(path: Path) -> tuple[tuple[int, ...], int]:
    """``(shape, data offset)`` of a C-ordered float32 ``.npy`` file."""
    with open(path, "rb") as f:
        major, _ = np.lib.format.read_magic(f)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read(f)
        if fortran or dtype != np.float32:
            raise ConfigError(f"{path}: expected a C-ordered float32 array")
        return tuple(shape), f.tell()


# --- synthetic -------------------------------------------------------------------------------


def default_clusters(n: int) -> int:
    return max(10, round(n / POINTS_PER_CLUSTER))


@functools.lru_cache(maxsize=4)
def _clusters(dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(centroids, cumulative weights, spreads)`` of the mixture. Centroids share a common
    direction (norm ``MEAN_SHIFT`` before normalising), as sentence embeddings do; cluster
    weights and spreads are log-normal (``WEIGHT_SIGMA``, ``SPREAD_SIGMA``), so that some
    topics are large and some diffuse."""
    rng = np.random.default_rng([seed, dim, clusters, 0])
    c = rng.standard_normal((clusters, dim), dtype=np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    mean = rng.standard_normal(dim).astype(np.float32)
    c += np.float32(MEAN_SHIFT) * mean / np.linalg.norm(mean)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    weights = np.exp(rng.normal(0.0, WEIGHT_SIGMA, clusters))
    cdf = np.cumsum(weights / weights.sum())
    spreads = np.exp(rng.normal(0.0, SPREAD_SIGMA, clusters)).astype(np.float32)
    return c, cdf, spreads


def _basis(dim: int, clusters: int, seed: int, label: int) -> np.ndarray:
    rng = np.random.default_rng([seed, dim, clusters, 1, label])
    # Random Gaussian rows are close to orthogonal in high dimension; scaled so that a
    # standard normal combination has expected norm SUB_SCALE.
    scale = np.float32(SUB_SCALE / math.sqrt(SUB_RANK * dim))
    return rng.standard_normal((SUB_RANK, dim), dtype=np.float32) * scale


def synthetic_block(
    start: int, rows: int, *, dim: int, clusters: int, seed: int, stream: int = 0
) -> np.ndarray:
    """Rows ``start .. start+rows`` of the synthetic set (``stream`` 0: base, 1: queries).

    Deterministic per ``GEN_BLOCK``-aligned block, so any row range gives the same vectors."""
    with _one_blas_thread():
        return _synthetic_rows(start, rows, dim=dim, clusters=clusters, seed=seed, stream=stream)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """Many small matrix products: BLAS threads only add synchronisation (seen at 10 ms a
    product on a loaded machine)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _synthetic_rows(
    start: int, rows: int, *, dim: int, clusters: int, seed: int, stream: int
) -> np.ndarray:
    cents, cdf, spreads = _clusters(dim, clusters, seed)
    out = np.empty((rows, dim), dtype=np.float32)
    done = 0
    bases: dict[int, np.ndarray] = {}
    while done < rows:
        row = start + done
        block = row // GEN_BLOCK
        block_start = block * GEN_BLOCK
        block_vecs = _synthetic_full_block(
            block,
            dim=dim,
            clusters=clusters,
            seed=seed,
            stream=stream,
            mixture=(cents, cdf, spreads),
            bases=bases,
        )
        lo = row - block_start
        take = min(rows - done, GEN_BLOCK - lo)
        out[done : done + take] = block_vecs[lo : lo + take]
        done += take
    return out


def _synthetic_full_block(
    block: int,
    *,
    dim: int,
    clusters: int,
    seed: int,
    stream: int,
    mixture: tuple[np.ndarray, np.ndarray, np.ndarray],
    bases: dict[int, np.ndarray],
) -> np.ndarray:
    cents, cdf, spreads = mixture
    rng = np.random.default_rng([seed, dim, clusters, 2 + stream, block])
    labels = np.minimum(np.searchsorted(cdf, rng.random(GEN_BLOCK)), clusters - 1)
    scale = spreads[labels][:, None]
    z = rng.standard_normal((GEN_BLOCK, SUB_RANK), dtype=np.float32)
    z *= scale
    noise = rng.standard_normal((GEN_BLOCK, dim), dtype=np.float32)
    noise *= np.float32(ISO_SCALE / math.sqrt(dim)) * scale  # in place: stays float32
    x = cents[labels] + noise
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    for group in np.split(order, bounds):
        label = int(labels[group[0]])
        basis = bases.get(label)
        if basis is None:
            basis = bases[label] = _basis(dim, clusters, seed, label)
        x[group] += z[group] @ basis
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# --- real embeddings: SciFact passages -------------------------------------------------------

_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")


def scifact_passages(folder: Path) -> list[str]:
    """Titles, sentences and two-sentence windows of SciFact's abstracts, in corpus order."""
    out: list[str] = []
    with open(Path(folder) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            title = (doc.get("title") or "").strip()
            if title:
                out.append(title)
            sents = [
                s.strip() for s in _SENTENCE.split(doc.get("text") or "") if len(s.strip()) > 20
            ]
            out.extend(sents)
            out.extend(f"{a} {b}" for a, b in itertools.pairwise(sents))
    return out


def scifact_claims(folder: Path) -> list[str]:
    with open(Path(folder) / "queries.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


SCIFACT_SHUFFLE_SEED = 0
SCIFACT_PART = 8192


def scifact_embeddings(
    folder: Path,
    cache_dir: Path,
    *,
    rows: int | None = None,
    backend: str = "torch",
    log: Callable[[str], None] = print,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``(passages, claims, info)``: unit vectors of the first ``rows`` passages in a fixed
    shuffled order (all of them by default) and of every claim, embedded with
    ``rag.embeddings.load_embedder(backend=backend)`` and cached in
    ``cache_dir/scifact-emb-<backend>/`` in parts of 8,192 passages. Only the parts needed
    are embedded, so a smaller dataset is ready sooner, and an interrupted run resumes
    from the last saved part."""
    texts = scifact_passages(folder)
    if not texts:
        raise ConfigError(f"{folder}: no SciFact passages found")
    rows = len(texts) if rows is None else min(rows, len(texts))
    order = np.random.default_rng(SCIFACT_SHUFFLE_SEED).permutation(len(texts))
    target = Path(cache_dir) / f"scifact-emb-{backend}"
    target.mkdir(parents=True, exist_ok=True)
    embedder = None
    parts = []
    started = time.perf_counter()
    embedded = 0
    for i, start in enumerate(range(0, rows, SCIFACT_PART)):
        pfile = target / f"part{i:03d}.npy"
        if not pfile.exists():
            if embedder is None:
                from rag.embeddings import load_embedder

                embedder = load_embedder(backend=backend, batch_size=64)
            idx = order[start : start + SCIFACT_PART]
            vecs = embedder.embed([texts[j] for j in idx])
            np.save(target / f"part{i:03d}.tmp.npy", vecs)
            os.replace(target / f"part{i:03d}.tmp.npy", pfile)
            embedded += len(vecs)
            rate = embedded / max(time.perf_counter() - started, 1e-9)
            log(f"scifact: embedded {start + len(vecs):,}/{len(texts):,} passages ({rate:.0f}/s)")
        parts.append(np.load(pfile))
    claims_file = target / "claims.npy"
    if not claims_file.exists():
        if embedder is None:
            from rag.embeddings import load_embedder

            embedder = load_embedder(backend=backend, batch_size=64)
        np.save(target / "claims.tmp.npy", embedder.embed(scifact_claims(folder)))
        os.replace(target / "claims.tmp.npy", claims_file)
    from rag.config import DEFAULT_EMBED_MODEL

    info = {
        "embedder": DEFAULT_EMBED_MODEL,
        "backend": backend,
        "passages": len(texts),
        "shuffle_seed": SCIFACT_SHUFFLE_SEED,
    }
    passages = np.ascontiguousarray(np.vstack(parts)[:rows], dtype=np.float32)
    return passages, np.load(claims_file), info


# --- ann-benchmarks HDF5 -----------------------------------------------------------------------


def read_hdf5(path: Path) -> tuple[Any, np.ndarray, str]:
    """``(train dataset (lazy), test vectors, distance)`` of an ann-benchmarks file."""
    import h5py

    f = h5py.File(path, "r")
    for name in ("train", "test"):
        if name not in f:
            raise ConfigError(f"{path} is not an ann-benchmarks file: no {name!r} dataset")
    return (
        f["train"],
        np.asarray(f["test"], dtype=np.float32),
        str(f.attrs.get("distance", "angular")),
    )


# --- the cache -------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def dataset_key(
    name: str, n: int, dim: int, seed: int, queries: int, *, backend: str = "torch"
) -> str:
    if name == "synthetic":
        return f"synthetic{GENERATOR_VERSION}-d{dim}-c{default_clusters(n)}-s{seed}-q{queries}-n{n}"
    if name == "scifact":
        return f"scifact-{backend}-s{seed}-q{queries}-n{n}"
    if name.startswith("hdf5:"):
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(name[5:]).stem)
        return f"hdf5-{stem}-q{queries}-n{n}"
    raise ConfigError(f"unknown dataset {name!r}: use synthetic, scifact or hdf5:PATH")


def dataset_dim(name: str, dim: int) -> int:
    """The vector dimension of a dataset (``dim`` for synthetic data)."""
    if name == "scifact":
        return 384  # all-MiniLM-L6-v2
    if name.startswith("hdf5:"):
        train, _, _ = read_hdf5(Path(name[5:]))
        return int(train.shape[1])
    return dim


def available_rows(name: str, *, scifact_dir: Path, cache_dir: Path, backend: str) -> int | None:
    """How many base vectors a dataset has (``None``: unbounded)."""
    if name == "synthetic":
        return None
    if name == "scifact":
        return len(scifact_passages(scifact_dir))
    train, _, _ = read_hdf5(Path(name[5:]))
    return int(train.shape[0])


def prepare(
    name: str,
    n: int,
    *,
    dim: int,
    cache_dir: Path,
    seed: int = DEFAULT_SEED,
    queries: int = DEFAULT_QUERIES,
    scifact_dir: Path | None = None,
    embed_backend: str = "torch",
    log: Callable[[str], None] = print,
) -> Dataset:
    """The dataset ``name`` at size ``n``, computed once and cached."""
    key = dataset_key(name, n, dim, seed, queries, backend=embed_backend)
    folder = Path(cache_dir) / key
    info_file = folder / "info.json"
    if info_file.exists():
        info = json.loads(info_file.read_text())
        return Dataset(key, name, n, int(info["dim"]), folder, info)
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted preparation
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    info: dict[str, Any] = {"name": name, "n": n, "seed": seed}
    if name == "synthetic":
        clusters = default_clusters(n)
        base = np.lib.format.open_memmap(tmp / "base.npy", "w+", np.float32, (n, dim))
        for start in range(0, n, BLOCK):
            rows = min(BLOCK, n - start)
            base[start : start + rows] = synthetic_block(
                start, rows, dim=dim, clusters=clusters, seed=seed
            )
        base.flush()
        del base
        q = synthetic_block(0, queries, dim=dim, clusters=clusters, seed=seed, stream=1)
        info.update(
            generator=GENERATOR_VERSION,
            clusters=clusters,
            sub_rank=SUB_RANK,
            sub_scale=SUB_SCALE,
            iso_scale=ISO_SCALE,
            mean_shift=MEAN_SHIFT,
            weight_sigma=WEIGHT_SIGMA,
            spread_sigma=SPREAD_SIGMA,
        )
    elif name == "scifact":
        if scifact_dir is None:
            raise ConfigError("the scifact dataset needs --scifact-dir")
        passages, claims, emb_info = scifact_embeddings(
            scifact_dir, cache_dir, rows=n, backend=embed_backend, log=log
        )
        if n > len(passages):
            raise ConfigError(f"scifact has {len(passages):,} passages, fewer than {n:,}")
        np.save(tmp / "base.npy", _normalise(passages[:n]))
        rng = np.random.default_rng([seed, 1])
        q = claims[rng.permutation(len(claims))[: min(queries, len(claims))]]
        info.update(embedding=emb_info)
    elif name.startswith("hdf5:"):
        train, test, distance = read_hdf5(Path(name[5:]))
        if n > train.shape[0]:
            raise ConfigError(f"{name} has {train.shape[0]:,} train vectors, fewer than {n:,}")
        base = np.lib.format.open_memmap(tmp / "base.npy", "w+", np.float32, (n, train.shape[1]))
        for start in range(0, n, BLOCK):
            base[start : start + BLOCK] = _normalise(train[start : min(n, start + BLOCK)])
        base.flush()
        del base
        q = test[:queries]
        info.update(source_distance=distance, note="normalised; ground truth is cosine")
    else:
        raise ConfigError(f"unknown dataset {name!r}")
    q = _normalise(q)
    np.save(tmp / "queries.npy", q)
    real_dim = int(q.shape[1])
    base_arr = np.load(tmp / "base.npy", mmap_mode="r")
    rows = np.arange(n)
    for tag, select in (("all", None), ("f1", FILTERS["1%"][1]), ("f10", FILTERS["10%"][1])):
        subset = None if select is None else np.flatnonzero(select(rows))
        ids, scores = exact_knn(base_arr, q, GT_K, subset=subset)
        np.save(tmp / f"gt_{tag}_ids.npy", ids)
        np.save(tmp / f"gt_{tag}_scores.npy", scores)
    gt_ids, gt_scores = np.load(tmp / "gt_all_ids.npy"), np.load(tmp / "gt_all_scores.npy")
    sample = np.asarray(
        base_arr[np.random.default_rng(seed).choice(n, min(n, 2000), replace=False)]
    )
    info.update(difficulty(q, gt_scores, sample))
    del base_arr, gt_ids
    info.update(
        dim=real_dim, queries=len(q), gt_k=GT_K, seconds=round(time.perf_counter() - started, 1)
    )
    (tmp / "info.json").write_text(json.dumps(info, indent=1))
    os.replace(tmp, folder)
    log(f"dataset {key}: prepared in {info['seconds']} s")
    return Dataset(key, name, n, real_dim, folder, info)


def difficulty(
    queries: np.ndarray, truth_scores: np.ndarray, sample: np.ndarray
) -> dict[str, float]:
    """How hard nearest-neighbour search is on a dataset, from the queries' exact neighbours:
    the median local intrinsic dimensionality (LID, maximum-likelihood estimate over the 20
    nearest neighbours: ``-1 / mean(log(d_i / d_20))``) and the median relative contrast
    (mean distance to random rows over the distance to the nearest). Higher LID and lower
    contrast mean harder search (Aumüller and Ceccarello, 2019)."""
    k = min(20, truth_scores.shape[1])
    d = np.sqrt(np.maximum(2.0 - 2.0 * truth_scores[:, :k].astype(np.float64), 1e-12))
    ratios = np.log(d[:, :-1] / d[:, -1:])
    lid = -1.0 / np.minimum(ratios.mean(axis=1), -1e-12)
    far = np.sqrt(np.maximum(2.0 - 2.0 * (queries @ sample.T), 1e-12)).mean(axis=1)
    contrast = far / d[:, 0]
    return {
        "lid20": round(float(np.median(lid)), 2),
        "contrast": round(float(np.median(contrast)), 3),
    }


def exact_knn(
    base: np.ndarray, queries: np.ndarray, k: int, *, subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product with FAISS, scanning ``base`` (or its rows
    ``subset``) in blocks. Returns row ids (``-1`` past the end) and scores, best first;
    equal scores keep the lower row id first."""
    import faiss

    nq = len(queries)
    best_s = np.full((nq, 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((nq, 0), dtype=np.int64)
    rows = np.arange(len(base)) if subset is None else np.asarray(subset, dtype=np.int64)
    for start in range(0, len(rows), BLOCK):
        sel = rows[start : start + BLOCK]
        block = np.ascontiguousarray(base[sel[0] : sel[-1] + 1] if subset is None else base[sel])
        index = faiss.IndexFlatIP(block.shape[1])
        index.add(block)
        s, i = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(sel)))
        i = np.where(i >= 0, sel[np.maximum(i, 0)], -1)
        best_s = np.concatenate([best_s, s], axis=1)
        best_i = np.concatenate([best_i, i], axis=1)
        order = np.lexsort((best_i, -best_s), axis=1)[:, :k]
        best_s = np.take_along_axis(best_s, order, axis=1)
        best_i = np.take_along_axis(best_i, order, axis=1)
    if best_s.shape[1] < k:  # fewer rows than k
        pad = k - best_s.shape[1]
        best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_i, best_s.astype(np.float32)
