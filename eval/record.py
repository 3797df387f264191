"""Writing a benchmark script's result file: what ran, on what, and what it measured."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def write_result(path: Path, module: str, argv: list[str] | None, body: dict[str, Any]) -> None:
    """Write ``body`` to ``path`` as JSON, headed by the command that produced it (``python
    -m MODULE ARGS``), the CPU count and the load average when it ended (the machine is
    shared: a load over the core count means slow timings)."""
    args = sys.argv[1:] if argv is None else argv
    result = {
        "command": " ".join(["python -m", module, *args]),
        "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        **body,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {path}")
