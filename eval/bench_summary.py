"""The shipped sweep: ``eval/results/bench-sweep.jsonl``, what ``rag bench --advise`` reads
on a fresh clone.

The raw results of the sweep in ``docs/bench/report.md`` (``OUT/results.jsonl``, a few MB
with host details and per-phase memory) are not in the repository; this module turns the
report's tables back into one record per job carrying what the advisor uses: recall@10
and median latency per value of the search parameter, the time to a searchable index, peak
memory (process and server), disk, throughput, and the jobs that ran over budget with
their reason. Regenerate it after a new sweep's report is committed::

    python -m eval.bench_summary docs/bench/report.md --out eval/results/bench-sweep.jsonl

``tests/test_bench_disk.py`` checks that the committed file is what this produces from
the committed report.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.bench_stores import SPECS
from rag.errors import ConfigError

#: Where the shipped sweep lives, next to the other committed results.
SHIPPED = Path(__file__).resolve().parent / "results" / "bench-sweep.jsonl"
#: What the report's figures say they come from.
SOURCE = "docs/bench/report.md"
DEFAULT_DIM = 384  # the benchmark's default; the report's commands name --dim otherwise


def _size(text: str) -> int:
    t = text.strip()
    mult = {"k": 1_000, "M": 1_000_000}.get(t[-1:], 1)
    return round(float(t[:-1] if mult > 1 else t) * mult)


def _num(text: str) -> float | None:
    t = text.strip().replace(",", "")
    if t in ("", "-", "in load", "nan"):
        return None
    return float(t)


def _tables(lines: list[str], start: int) -> tuple[list[str], list[list[str]], int]:
    """The markdown table beginning at ``lines[start]``: header, rows, the next line."""
    header = [c.strip() for c in lines[start].strip().strip("|").split("|")]
    rows, i = [], start + 2  # past the |---| line
    while i < len(lines) and lines[i].startswith("|"):
        rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
        i += 1
    return header, rows, i


def _value(text: str) -> int | None:
    return None if text in ("-", "") else int(text)


def from_report(text: str) -> list[dict[str, Any]]:
    """One record per job of the report's synthetic dataset, sorted by (N, config)."""
    lines = text.splitlines()
    dim_match = re.search(r"--dim[ =](\d+)", text)
    dim = int(dim_match.group(1)) if dim_match else DEFAULT_DIM
    configs = dict(re.findall(r"^\* `([^`]+)`: (.*); backend `[^`]+`$", text, flags=re.M))
    section = None
    jobs: dict[tuple[int, str], dict[str, Any]] = {}
    sweeps: dict[tuple[int, str], list[dict[str, Any]]] = {}
    skipped: list[dict[str, Any]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        if not line.startswith("| ") or section is None:
            i += 1
            continue
        header, rows, i = _tables(lines, i)
        if section == "Dataset: synthetic" and header[:2] == ["N", "config"]:
            col = {h: k for k, h in enumerate(header)}
            qps_col = next(h for h in header if h.startswith("QPS "))
            clients = qps_col.split()[1].split("/")
            for row in rows:
                n, config = _size(row[0]), row[1]
                qps = [_num(q) for q in row[col[qps_col]].split("/")]
                jobs[(n, config)] = {
                    "index_total_s": _num(row[col["index s"]]),
                    "disk_mb": _num(row[col["disk MB"]]),
                    "peak_rss_max_mb": _num(row[col["peak RSS MB"]]),
                    "server_peak_max_mb": _num(row[col["server MB"]]),
                    "default": _value(row[col["param"]]),
                    "recall": _num(row[col["recall@10"]]),
                    "p50_ms": _num(row[col["p50 ms"]]),
                    "p99_ms": _num(row[col["p99 ms"]]),
                    "throughput": {
                        c: {"qps": q} for c, q in zip(clients, qps, strict=True) if q is not None
                    },
                }
        elif section == "Dataset: synthetic" and header[0] == "config":
            for config, n_text, param, cells in rows:
                points = []
                for cell in cells.split(", "):
                    m = re.fullmatch(r"(\d+): ([\d.]+) @ ([\d.,]+) ms", cell)
                    if not m:
                        raise ConfigError(f"unreadable sweep cell {cell!r} ({config} {n_text})")
                    points.append(
                        {
                            "param": param,
                            "value": int(m.group(1)),
                            "recall": float(m.group(2)),
                            "p50_ms": float(m.group(3).replace(",", "")),
                        }
                    )
                sweeps[(_size(n_text), config)] = points
        elif section == "Skipped and failed jobs":
            for n_text, dataset, config, status, reason in rows:
                if dataset == "synthetic":
                    skipped.append(
                        {"n": _size(n_text), "config": config, "status": status, "reason": reason}
                    )
    if not jobs:
        raise ConfigError("no synthetic results table found in the report")
    out = []
    for (n, config), fig in jobs.items():
        sweep = sweeps.get((n, config)) or [
            {"param": None, "value": None, "recall": fig["recall"], "p50_ms": fig["p50_ms"]}
        ]
        out.append({**_base(config, n, dim, configs), "status": "ok", **fig, "sweep": sweep})
    for s in skipped:
        out.append({**_base(s["config"], s["n"], dim, configs), **s})
    return sorted(out, key=lambda r: (r["n"], r["config"], r["status"]))


def _base(config: str, n: int, dim: int, descriptions: dict[str, str]) -> dict[str, Any]:
    spec = SPECS.get(config)
    return {
        "dataset": "synthetic",
        "n": n,
        "dim": dim,
        "config": config,
        "backend": spec.backend if spec else None,
        "family": spec.family if spec else None,
        "description": descriptions.get(config) or (spec.description if spec else ""),
        "options": spec.options(n, dim) if spec else {},
        "quick": False,
        "source": SOURCE,
    }


def write(records: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m eval.bench_summary",
        description="Summarise a benchmark report's tables as the JSONL --advise reads.",
    )
    p.add_argument("report", type=Path, help="a report.md written by rag bench")
    p.add_argument("--out", type=Path, required=True, help="the JSONL to write")
    args = p.parse_args(argv)
    try:
        records = from_report(args.report.read_text(encoding="utf-8"))
    except (OSError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    write(records, args.out)
    print(f"{len(records)} jobs written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
