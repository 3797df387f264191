"""``rag ingest PATH --watch``: keep a collection in sync with folders as files change.

Changes are collected for a short quiet period, then an incremental ingest runs (only what
changed is read and embedded). Uses watchdog's native file events when it is installed, and
polls the folders' file times otherwise.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag.commands import display_path, printable

QUIET_SECONDS = 1.0
POLL_SECONDS = 2.0


def watch(
    collection: Any,
    paths: Sequence[str],
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    cleanup: str = "full",
    as_json: bool = False,
    quiet: bool = False,
    max_rounds: int | None = None,
) -> int:
    """Ingest once, then again after every burst of changes, until interrupted (or after
    ``max_rounds`` ingests, for tests)."""
    changed = threading.Event()
    observer = _observer(paths, changed)
    rounds = 0

    def run() -> None:
        nonlocal rounds
        report = collection.ingest(paths, include=include, exclude=exclude, cleanup=cleanup)
        rounds += 1
        out = report.to_json()
        if as_json:
            print(json.dumps(out), flush=True)
        elif not quiet or out["failed"]:
            print(
                f"[{time.strftime('%H:%M:%S')}] {out['added']} added, {out['updated']} updated, "
                f"{out['deleted']} removed, {len(out['failed'])} failed ({out['seconds']:.1f} s)",
                flush=True,
            )
            for f in out["failed"]:
                print(
                    f"  failed: {display_path(f['path'])}: {printable(f['reason'])}",
                    file=sys.stderr,
                )

    try:
        run()
        if not quiet and not as_json:
            shown = ", ".join(display_path(p) for p in paths)
            print(f"watching {shown} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        last_state = _snapshot(paths) if observer is None else None
        while max_rounds is None or rounds < max_rounds:
            if observer is None:
                time.sleep(POLL_SECONDS)
                state = _snapshot(paths)
                if state == last_state:
                    continue
                last_state = state
            else:
                changed.wait()
                # Let a burst of writes settle before ingesting.
                while True:
                    changed.clear()
                    if not changed.wait(QUIET_SECONDS):
                        break
            run()
    except KeyboardInterrupt:
        pass
    finally:
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
    return 0


def _observer(paths: Sequence[str], changed: threading.Event) -> Any:
    try:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
    except ImportError:
        return None

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return
            changed.set()

    observer = Observer()
    handler = Handler()
    for p in paths:
        path = Path(p)
        target = path if path.is_dir() else path.parent
        observer.schedule(handler, str(target), recursive=path.is_dir())
    observer.start()
    return observer


def _snapshot(paths: Sequence[str]) -> dict[str, tuple[int, float]]:
    out: dict[str, tuple[int, float]] = {}
    for p in paths:
        root = Path(p)
        files = [root] if root.is_file() else (f for f in root.rglob("*") if f.is_file())
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            out[str(f)] = (st.st_size, st.st_mtime)
    return out
