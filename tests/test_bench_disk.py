"""``rag bench`` on disk: results and caches under the data directory or ``--out``, never in
the package; ``--json``; ``--advise``'s exit statuses, the shipped sweep it reads on a fresh
clone, and its refusal to predict past what was measured; a fresh clone stays clean after
a benchmark and an evaluation."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eval import bench, bench_advise
from rag.errors import RagError

ROOT = Path(bench.__file__).resolve().parent.parent
PACKAGES = ("rag", "apps", "eval", "connectors", "vectorstores")
#: A quick run bounded further: one size, one configuration, few queries (~5 s).
SMALL = [
    "--quick",
    "--sizes",
    "1000",
    "--stores",
    "faiss-flat",
    "--queries",
    "20",
    "--filtered-queries",
    "5",
    "--clients",
    "1",
    "--no-progress",
]


def package_files(root: Path, *, bytecode: bool = True) -> set[str]:
    """Every file under the package folders of ``root``, relative to it."""
    out = set()
    for name in PACKAGES:
        for path in (root / name).rglob("*"):
            if path.is_dir() or (not bytecode and "__pycache__" in path.parts):
                continue
            out.add(path.relative_to(root).as_posix())
    return out


def shipped() -> list[dict]:
    return bench.load_records(bench.SHIPPED_SWEEP)


# --- where things go ---------------------------------------------------------------------------


def test_results_and_cache_go_under_the_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = package_files(ROOT, bytecode=False)
    data = tmp_path / "data"
    assert bench.main([*SMALL, "--data-dir", str(data), "--json"]) == 0
    out = data / "bench" / "runs" / "latest"
    assert (out / "results.jsonl").exists() and (out / "report.md").exists()
    assert [p.name for p in (data / "bench" / "cache").iterdir()]  # the dataset, cached
    assert package_files(ROOT, bytecode=False) == before
    # --json: one object on stdout, saying where everything went, with the headline figures.
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out.resolve())
    assert summary["results"] == str((out / "results.jsonl").resolve())
    assert summary["report"] == str((out / "report.md").resolve())
    assert summary["cache"] == str((data / "bench" / "cache").resolve())
    assert summary["jobs_run"] == 1 and all(Path(p).exists() for p in summary["plots"])
    [job] = summary["jobs"]
    assert (job["dataset"], job["n"], job["config"], job["status"]) == (
        "synthetic",
        1000,
        "faiss-flat",
        "ok",
    )
    assert job["recall"] == 1.0 and job["p50_ms"] > 0 and job["index_s"] > 0
    assert job["peak_mb"] > 0 and job["filtered_recall"]["1%"] == 1.0


def test_out_keeps_the_cache_out_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out`` given: results there, the cache under ``RAG_DATA_DIR``, nothing in eval/."""
    before = package_files(ROOT, bytecode=False)
    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "env-data"))
    out = tmp_path / "out"
    assert bench.main([*SMALL, "--out", str(out)]) == 0
    assert len(bench.load_records(out / "results.jsonl")) == 1
    assert [p.name for p in (tmp_path / "env-data" / "bench" / "cache").iterdir()]
    assert not (tmp_path / "env-data" / "bench" / "runs").exists()
    assert package_files(ROOT, bytecode=False) == before


def test_help_shows_the_defaults() -> None:
    text = " ".join(bench.build_parser().format_help().split())
    for expected in (
        "(default: 10k,100k)",
        "(default: 1000)",
        "(default: all)",
        "(default <data dir>/bench/runs/latest)",
        "(default <data dir>/bench/cache)",
        "(default RAG_DATA_DIR, else .rag)",
        "(default: 1.0)",  # --max-extrapolation
    ):
        assert expected in text, expected


# --- --advise: nothing to advise from ------------------------------------------------------------


def test_advise_with_nothing_measured_exits_1_and_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    assert bench.main(["--advise", "--n", "1m", "--data-dir", str(data)]) == 1
    err = capsys.readouterr()
    assert err.out == ""
    expected = data / "bench" / "runs" / "latest" / "results.jsonl"
    assert "nothing to advise from" in err.err and str(expected) in err.err
    assert str(bench.SHIPPED_SWEEP) in err.err  # and where measurements can be found
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert bench.main(["--advise", "--n", "1m", "--results", str(empty)]) == 1
    assert str(empty) in capsys.readouterr().err
    # Usage mistakes are 2: no --n, a size that is not one, a factor under 1.
    assert bench.main(["--advise", "--data-dir", str(data)]) == 2
    with pytest.raises(SystemExit) as e:
        bench.main(["--advise", "--n", "ten"])
    assert e.value.code == 2
    assert (
        bench.main(
            [
                "--advise",
                "--n",
                "1m",
                "--results",
                str(bench.SHIPPED_SWEEP),
                "--max-extrapolation",
                "0.5",
            ]
        )
        == 2
    )
    assert not data.exists()  # advice writes nothing


# --- --advise: the shipped sweep, and no predictions past it ------------------------------------


def test_shipped_sweep_is_the_committed_report() -> None:
    pytest.importorskip("psycopg")  # pgvector's options are computed by its adapter
    from eval.bench_summary import from_report

    report = (ROOT / "docs" / "bench" / "report.md").read_text(encoding="utf-8")
    assert from_report(report) == shipped()
    by = {(r["config"], r["n"]): r for r in shipped()}
    hnsw = by[("faiss-hnsw", 1_000_000)]
    assert hnsw["recall"] == 0.724 and hnsw["default"] == 64
    assert next(s for s in hnsw["sweep"] if s["value"] == 256)["recall"] == 0.91
    assert by[("pgvector-hnsw", 1_000_000)]["status"] == "skipped"


def test_advise_from_the_shipped_sweep_states_what_was_measured(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--advise", "--n", "1m", "--dim", "384", "--recall", "0.95"]
    assert bench.main([*argv, "--results", str(bench.SHIPPED_SWEEP)]) == 0
    text = capsys.readouterr().out
    assert "at 10k, 30k, 100k, 1M (largest N measured: 1M)" in text
    # At a measured size the recall is the measurement: FAISS IVF reaches 0.989 at nprobe 8.
    assert "Recommendation: faiss-ivf" in text and "nprobe=8" in text
    assert "predicted recall@10 0.989" in text
    assert "faiss-hnsw: excluded, predicted recall at most 0.910 at 1M" in text
    assert bench.main([*argv, "--results", str(bench.SHIPPED_SWEEP.parent), "--json"]) == 1
    assert bench.main([*argv, "--results", str(bench.SHIPPED_SWEEP), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["largest_measured"] == 1_000_000 and data["extrapolation"] is None
    assert data["recommendation"]["config"] == "faiss-ivf"


def _quick_like(sizes: tuple[int, ...]) -> list[dict]:
    """FAISS HNSW as a quick run measures it: recall barely moves between 10k and 20k."""
    recall = {10_000: 0.997, 20_000: 0.996}
    return [
        {
            "status": "ok",
            "dataset": "synthetic",
            "config": "faiss-hnsw",
            "family": "hnsw",
            "n": n,
            "dim": 384,
            "quick": True,
            "options": {},
            "index_total_s": n / 5000,
            "peak_rss_max_mb": 100 + n / 1000,
            "sweep": [
                {
                    "param": "ef_search",
                    "value": 64,
                    "recall": recall[n],
                    "p50_ms": 0.35,
                    "mean_ms": 0.4,
                },
            ],
        }
        for n in sizes
    ]


def test_advisor_refuses_to_predict_past_the_measured_sizes() -> None:
    recs = _quick_like((10_000, 20_000))
    # Today's quick run would have predicted ~0.99 at 1M; the sweep measured 0.724 there.
    with pytest.raises(RagError) as e:
        bench_advise.advise(recs, n=1_000_000, dim=384, recall=0.95, ram_mb=24_000)
    assert isinstance(e.value, bench_advise.NoAdvice)
    message = str(e.value)
    assert "go up to 20k" in message and "10k, 20k" in message
    assert "50.0x the largest size measured" in message and "--max-extrapolation 50" in message
    # Within what was measured: advice, saying how far the measurements went.
    text = bench_advise.advise(recs, n=15_000, dim=384, recall=0.95, ram_mb=24_000)
    assert "Recommendation: faiss-hnsw" in text and "largest N measured: 20k" in text
    assert "Warning" not in text
    # A stated factor lets it through, with the warning.
    text = bench_advise.advise(
        recs, n=1_000_000, dim=384, recall=0.95, ram_mb=24_000, max_factor=50
    )
    assert "Warning: 1M is 50.0x the largest measured size" in text


def test_sweep_advice_refuses_past_its_1m(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--advise", "--n", "5m", "--dim", "768", "--results", str(bench.SHIPPED_SWEEP)]
    assert bench.main(argv) == 1
    err = capsys.readouterr().err
    assert "go up to 1M" in err and "5.0x" in err and "--max-extrapolation 5" in err
    assert bench.main([*argv, "--max-extrapolation", "5"]) == 0
    assert "Warning: 5M is 5.0x" in capsys.readouterr().out


def test_a_configuration_measured_less_far_is_excluded() -> None:
    recs = [r for r in shipped() if r["config"] in ("faiss-ivf", "faiss-hnsw")]
    recs = [r for r in recs if r["config"] == "faiss-ivf" or r["n"] <= 100_000]
    text = bench_advise.advise(recs, n=1_000_000, dim=384, recall=0.9, ram_mb=24_000)
    assert "faiss-hnsw: excluded, measured only up to 100k: 1M is 10.0x past it" in text
    assert "Recommendation: faiss-ivf" in text


def test_recall_is_interpolated_between_measured_sizes() -> None:
    pts = [(100_000, 0.96), (1_000_000, 0.72)]
    assert bench_advise.predict_recall(pts, 100_000) == pytest.approx(0.96)
    assert bench_advise.predict_recall(pts, 316_228) == pytest.approx(0.84, abs=1e-3)
    assert bench_advise.predict_recall(pts, 10_000) == pytest.approx(0.96)


# --- a fresh clone -----------------------------------------------------------------------------


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


def fresh_clone(dest: Path) -> Path:
    """A ``git clone`` of this repository with the working tree's uncommitted changes
    committed on top, so that it is what the next commit holds (nothing, once committed)."""
    _git("clone", "-q", "--no-hardlinks", str(ROOT), str(dest), cwd=dest.parent)
    diff = subprocess.run(
        ["git", "diff", "HEAD", "--binary"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    if diff:
        subprocess.run(["git", "apply", "--binary", "-"], cwd=dest, input=diff, check=True)
    untracked = _git("ls-files", "--others", "--exclude-standard", "-z", cwd=ROOT)
    for rel in filter(None, untracked.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    if _git("status", "--porcelain", cwd=dest):
        _git("add", "-A", cwd=dest)
        _git(
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "commit",
            "-q",
            "-m",
            "working tree",
            cwd=dest,
        )
    return dest


def readme_bench_lines(readme: Path, flag: str) -> list[list[str]]:
    """The ``rag bench`` command lines of a README carrying ``flag``, as argv lists."""
    out = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("rag bench ") and flag in line.split():
            out.append(shlex.split(line, comments=True))
    return out


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_fresh_clone_stays_clean_after_a_benchmark_and_an_evaluation(tmp_path: Path) -> None:
    from tests.test_eval_harness import write_beir

    clone = fresh_clone(tmp_path / "clone")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(PYTHONPATH=str(clone), PYTHONDONTWRITEBYTECODE="1", HF_HUB_OFFLINE="1")
    clone_before = package_files(clone)
    installed_before = package_files(ROOT, bytecode=False)

    def rag(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "apps.cli", *args],
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, f"rag {shlex.join(args)}: {done.stderr[-2000:]}"
        return done

    located = subprocess.run(
        [sys.executable, "-c", "import eval, rag; print(eval.__file__, rag.__file__)"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(clone) for p in located)  # the clone's code runs

    out = tmp_path / "bench"
    rag("bench", *SMALL, "--out", str(out))
    assert len(bench.load_records(out / "results.jsonl")) == 1
    beir = write_beir(
        tmp_path / "beir",
        {
            "d1": {"title": "Volcanoes", "text": "Magma chambers feed volcanic eruptions."},
            "d2": {"title": "Glaciers", "text": "Glaciers retreat as the climate warms."},
        },
        {"q1": "what feeds volcanic eruptions", "q2": "why do glaciers retreat"},
        {"q1": {"d1": 1}, "q2": {"d2": 1}},
    )
    rag(
        "eval",
        "retrieval",
        "--dataset",
        str(beir),
        "--embed-backend",
        "hashing",
        "--embed-model",
        "hashing-64",
    )
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
    assert package_files(clone) == clone_before
    assert package_files(ROOT, bytecode=False) == installed_before
    # The README's advice example works on a fresh clone, from what the clone holds.
    examples = readme_bench_lines(clone / "README.md", "--advise")
    assert examples, "README.md shows no rag bench --advise example"
    for argv in examples:
        assert "Recommendation:" in rag(*argv[1:]).stdout
    assert _git("status", "--porcelain", "--untracked-files=all", cwd=clone) == ""
    assert package_files(clone) == clone_before
    # Where things went instead: the clone's (git-ignored) default data directory.
    assert [p.name for p in (clone / ".rag" / "bench" / "cache").iterdir()]
    assert list((clone / ".rag" / "eval-results").glob("retrieval-beir-*.json"))
    assert not re.search(r"eval/(runs|cache)", "\n".join(package_files(clone)))
