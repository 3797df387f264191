"""Drive ``rag ui`` in headless Chromium over the DevTools protocol; used by the browser
test, and run on its own to refresh the README's screenshots::

    .venv/bin/python -m tests.ui_screenshots        # writes docs/screenshots/{chat,ingest}.png

``chromium --screenshot`` would capture only Streamlit's loading skeleton: the app renders
over a websocket after the load event. So the page is driven as a user would (wait for the
chat input, type, press Enter, wait for the answer) and captured with
``Page.captureScreenshot``. Every wait is bounded; the browser and the server are stopped
(their whole process groups) on the way out.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
QUESTION = "What is the default vector store?"
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T], timeout: float, interval: float = 0.25) -> T:
    """``probe()``'s first truthy value, polling until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as e:  # the page may be mid-render; keep polling
            last_error = e
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """Stop ``proc`` and everything it started (it leads its own session)."""
    if proc.poll() is None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    # Children left behind in the group (the leader exited first).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# --- the app ----------------------------------------------------------------------------------


@contextlib.contextmanager
def run_ui(
    data_dir: Path, *, env: dict[str, str] | None = None, log: Path | None = None,
    startup_timeout: float = 90.0,
) -> Iterator[str]:  # fmt: skip
    """``rag ui`` (``python -m apps.cli ui``) on a free loopback port; yields its URL."""
    port = free_port()
    full_env = dict(os.environ)
    full_env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    cmd = [sys.executable, "-m", "apps.cli", "ui", "--data-dir", str(data_dir), "--port", str(port)]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"rag ui exited with status {proc.returncode}")
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                return r.read().decode().strip() == "ok"

        wait_for("the UI's /_stcore/health", healthy, startup_timeout, interval=0.5)
        yield url
    finally:
        _stop_group(proc)
        if log:
            out.close()  # type: ignore[union-attr]


# --- the browser ------------------------------------------------------------------------------


class Chromium:
    """Headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, executable: str = CHROMIUM, *, width: int = 1280, height: int = 900):
        import websocket  # websocket-client

        self._profile = tempfile.mkdtemp(prefix="ragkit-chromium-")
        self.proc = subprocess.Popen(
            [
                executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
                f"--user-data-dir={self._profile}", "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self._ws: Any = None
        self._id = 0
        try:
            active = Path(self._profile) / "DevToolsActivePort"

            def port() -> int | None:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with status {self.proc.returncode}")
                lines = active.read_text().split() if active.exists() else []
                return int(lines[0]) if len(lines) >= 2 else None

            devtools = wait_for("Chromium's DevTools port", port, 60)
            with urllib.request.urlopen(f"http://127.0.0.1:{devtools}/json/list", timeout=5) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            # No Origin header: Chromium refuses DevTools websockets from other origins.
            self._ws = websocket.create_connection(
                pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True
            )
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=width, height=height, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def send(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        """One DevTools command; its result (events in between are skipped)."""
        self._id += 1
        msg_id = self._id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._ws.settimeout(max(0.1, deadline - time.monotonic()))
            reply = json.loads(self._ws.recv())
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
        raise TimeoutError(f"{method}: no reply in {timeout:.0f} s")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def type_and_enter(self, selector: str, text: str) -> None:
        """Focus ``selector``, type ``text`` as a user would, and press Enter."""
        self.eval(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)
        for kind in ("keyDown", "keyUp"):
            self.send(
                "Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter",
                windowsVirtualKeyCode=13, nativeVirtualKeyCode=13,
                **({"text": "\r"} if kind == "keyDown" else {}),
            )  # fmt: skip

    def set_files(self, selector: str, files: list[Path]) -> None:
        """Choose ``files`` in the file input ``selector``, as the file dialog would."""
        root = self.send("DOM.getDocument", depth=1)["root"]["nodeId"]
        node = self.send("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        if not node:
            raise RuntimeError(f"no element matches {selector}")
        self.send("DOM.setFileInputFiles", nodeId=node, files=[str(f) for f in files])

    def click_button(self, label: str) -> bool:
        """Click the enabled button whose text is ``label``; whether there was one."""
        return bool(
            self.eval(
                "(() => { const b = [...document.querySelectorAll('button')].find("
                f"b => b.innerText.trim() === {json.dumps(label)} && !b.disabled);"
                " if (b) b.click(); return !!b; })()"
            )
        )

    def text(self) -> str:
        return self.eval("document.body.innerText") or ""

    def screenshot(self, path: Path, *, full_page: bool = True) -> Path:
        """A PNG of the page (the whole scrollable app when ``full_page``)."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            # Streamlit scrolls inside its own container, not the document: size the
            # viewport to the app's content for the capture, then restore it.
            h = self.eval(
                "Math.max(...[...document.querySelectorAll("
                "'.stMain, [data-testid=stAppScrollToBottomContainer], [data-testid=stSidebarContent]')]"
                ".map(e => e.scrollHeight), window.innerHeight)"
            )
            w = self.eval("window.innerWidth")
            height = int(min(max(h or 900, 600), 6000))
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=int(w), height=height, deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            time.sleep(1.0)  # let the layout settle at the new size
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        _stop_group(self.proc, grace=5.0)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- what the tests and the screenshots read from the page ------------------------------------

CHAT_INPUT = '[data-testid="stChatInputTextArea"]'

#: The last assistant message: its answer text, the citation links in it, the expanders
#: with their labels, and the "Answered by" line; null until the answer is complete.
READ_ANSWER = """(() => {
  const msgs = [...document.querySelectorAll('[data-testid="stChatMessage"]')];
  const last = msgs[msgs.length - 1];
  if (!last || msgs.length < 2) return null;
  const text = last.innerText || '';
  if (!/Answered by|Extractive answer/.test(text)) return null;
  const md = last.querySelector('[data-testid="stMarkdownContainer"]');
  const links = [...last.querySelectorAll('a[href^="#cite-"]')].map(a =>
      ({text: a.innerText, href: a.getAttribute('href')}));
  const expanders = [...last.querySelectorAll('[data-testid="stExpander"]')].map(e => ({
      label: (e.querySelector('summary') || e).innerText,
      open: !!(e.querySelector('details') || {}).open,
  }));
  return {answer: md ? md.innerText : '', links, expanders, text};
})()"""


def chat_ready(page: Chromium) -> bool:
    return bool(
        page.eval(
            f"(() => {{ const t = document.querySelector({json.dumps(CHAT_INPUT)});"
            " return !!t && !t.disabled; })()"
        )
    )


def ask(page: Chromium, url: str, question: str, *, timeout: float) -> dict[str, Any]:
    """Open the chat at ``url``, ask ``question``, and return :data:`READ_ANSWER`'s reading."""
    page.navigate(url)
    wait_for("the chat input", lambda: chat_ready(page), 90)
    page.type_and_enter(CHAT_INPUT, question)
    return wait_for("the answer", lambda: page.eval(READ_ANSWER), timeout, interval=1.0)


def open_citation(page: Chromium, href: str) -> bool:
    """Click the citation link ``href``; whether the passage it names is then visible in
    an open expander."""
    page.eval(f"document.querySelector('a[href={json.dumps(href)}]').click()")
    target = json.dumps(href[1:])

    def opened() -> bool:
        return bool(
            page.eval(
                f"(() => {{ const t = document.getElementById({target}); if (!t) return false;"
                " const d = t.closest('details'); const r = t.getBoundingClientRect();"
                " return (!d || d.open) && r.height > 0; })()"
            )
        )

    try:
        return wait_for("the cited passage to open", opened, 10)
    except TimeoutError:
        return False


UPLOAD_INPUT = '[data-testid="stFileUploader"] input[type="file"]'


def upload(page: Chromium, url: str, files: list[Path], *, timeout: float) -> str:
    """On the Ingest page at ``url``, upload ``files`` and ingest them; the page's text
    once the outcome is shown."""
    page.navigate(f"{url}/ingest")
    wait_for(
        "the file uploader",
        lambda: page.eval(f"!!document.querySelector({json.dumps(UPLOAD_INPUT)})"),
        90,
    )
    page.set_files(UPLOAD_INPUT, files)
    wait_for("the upload", lambda: page.click_button("Ingest uploaded files"), 60)

    def outcome() -> str | None:
        text = page.text()
        return text if "Ingested " in text or "refused" in text else None

    return wait_for("the ingest outcome", outcome, timeout, interval=0.5)


def sample_uploads(folder: Path) -> list[Path]:
    """A good Markdown file and a damaged PDF (which the ingest reports, with the reason)."""
    folder.mkdir(parents=True, exist_ok=True)
    notes = folder / "release-notes.md"
    notes.write_text(
        "# Release notes\n\n## 0.1.0\n\nThe chat UI streams answers and links every "
        "citation to its passage.\n"
    )
    scan = folder / "scanned-contract.pdf"
    scan.write_bytes(b"%PDF-1.7\n% a damaged scan\n")
    return [notes, scan]


def ingest_sample(data_dir: Path, **settings: Any) -> None:
    """Ingest ``data/`` through the library API."""
    from rag import Settings, open_collection

    with open_collection(Settings(data_dir=data_dir, **settings), create=True) as col:
        report = col.ingest([ROOT / "data"])
    assert report.total_chunks > 0, report.to_json()


def main() -> int:
    """Write docs/screenshots/chat.png and ingest.png (real embedder, local model)."""
    out = ROOT / "docs" / "screenshots"
    with tempfile.TemporaryDirectory(prefix="ragkit-ui-shots-") as tmp:
        data_dir = Path(tmp) / "rag"
        ingest_sample(data_dir)
        with run_ui(data_dir, log=Path(tmp) / "ui.log") as url, Chromium() as page:
            reading = ask(page, url, QUESTION, timeout=300)
            print("answer:", reading["answer"])
            if reading["links"]:
                open_citation(page, reading["links"][0]["href"])
            print("wrote", page.screenshot(out / "chat.png"))
            upload(page, url, sample_uploads(Path(tmp) / "uploads"), timeout=120)
            time.sleep(1.0)
            print("wrote", page.screenshot(out / "ingest.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
