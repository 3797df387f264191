"""``rag ui``: start the chat UI (a Streamlit server) on this machine.

Runs ``python -m streamlit run apps/ui/app.py`` on a loopback address by default, headless,
with usage statistics off, and hands ragkit's options to the app as script arguments.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

from rag.commands import Command, add_collection_options
from rag.errors import ConfigError, MissingDependencyError

APP = Path(__file__).resolve().parent.parent / "ui" / "app.py"
DEFAULT_PORT = 8501
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_UPLOAD_MB = 50.0
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _configure(p: argparse.ArgumentParser) -> None:
    add_collection_options(p, json_output=False)
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}; the UI has no login, so "
        "anything else exposes your collections)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=DEFAULT_MAX_UPLOAD_MB,
        help=f"largest file accepted by the upload form (default {DEFAULT_MAX_UPLOAD_MB:g})",
    )


def build_command(args: argparse.Namespace) -> list[str]:
    """The ``streamlit run`` command line for ``args`` (see :func:`run`)."""
    port = int(getattr(args, "port", DEFAULT_PORT))
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be between 1 and 65535, got {port}")
    mb = float(getattr(args, "max_upload_mb", DEFAULT_MAX_UPLOAD_MB))
    if not mb > 0:
        raise ConfigError(f"--max-upload-mb must be positive, got {mb:g}")
    host = getattr(args, "host", DEFAULT_HOST) or DEFAULT_HOST
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        # Streamlit's own cap is whole megabytes; the app checks the exact limit.
        "--server.maxUploadSize", str(max(1, math.ceil(mb))),
        "--server.fileWatcherType", "none",
        "--client.showErrorDetails", "none",
        "--client.toolbarMode", "minimal",
        "--",
        "--max-upload-mb", f"{mb:g}",
    ]  # fmt: skip
    data_dir = getattr(args, "data_dir", None)
    if data_dir is not None:
        cmd += ["--data-dir", str(Path(data_dir).expanduser().absolute())]
    for opt in ("collection", "store", "store_url"):
        value = getattr(args, opt, None)
        if value is not None:
            cmd += [f"--{opt.replace('_', '-')}", str(value)]
    for item in getattr(args, "store_opt", None) or []:
        cmd += ["--store-opt", str(item)]
    return cmd


def run(args: argparse.Namespace) -> int:
    """Run the Streamlit server until it exits or Ctrl-C; returns its exit status."""
    if importlib.util.find_spec("streamlit") is None:
        raise MissingDependencyError("the chat UI", "streamlit", "ui")
    cmd = build_command(args)
    host = getattr(args, "host", DEFAULT_HOST)
    if host not in _LOOPBACK:
        print(
            f"warning: listening on {host}: the UI has no login; anyone who can reach it can "
            "read your collections and ingest folders of this machine",
            file=sys.stderr,
        )
    url_host = f"[{host}]" if ":" in host else host
    print(f"ragkit UI on http://{url_host}:{args.port} (Ctrl-C stops it)", file=sys.stderr)
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["STREAMLIT_BROWSER_GATHER_USAGE_STATS"] = "false"
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to Streamlit too; give it a moment to stop cleanly.
        return _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> int:
    for sig, wait in ((None, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if sig is not None:
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return 0 if proc.returncode in (0, -signal.SIGINT, -signal.SIGTERM) else 1
        except subprocess.TimeoutExpired:
            continue
    return 1


command = Command(help="the chat UI in your browser (Streamlit)", configure=_configure, run=run)
