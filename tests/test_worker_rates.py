"""eval/worker_rates.py end to end in a small run (in its own process: it pins itself to one
CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_rates_are_measured_on_one_cpu(shared_datasets: Path, tmp_path: Path) -> None:
    out = tmp_path / "rates.json"
    cmd = [sys.executable, "-m", "eval.worker_rates", "--dataset", str(shared_datasets / "scifact")]
    cmd += ["--chunks", "16", "--repeats", "1", "--backends", "onnx-int8", "--out", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["chunks"] == 16 and result["mean_chars"] > 100
    assert set(result["embed_chunks_per_s_one_cpu"]) == {"onnx-int8"}
    assert result["embed_chunks_per_s_one_cpu"]["onnx-int8"] > 0
    assert result["faiss_writes_per_s_one_cpu"] > 0
    assert result["command"].endswith("--out " + str(out))
