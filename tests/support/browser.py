"""A real headless Chromium (Debian's), driven over its DevTools protocol.

No browser is downloaded: the test uses the ``chromium`` on PATH (``VGATE_CHROMIUM`` names
another). Console messages, uncaught exceptions (also in timers and promises) and the
browser's own log (failed loads, blocked requests) are all collected, so a test can assert
that a page ran without a single error.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from vgate import procs

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser_binary() -> str | None:
    named = os.environ.get("VGATE_CHROMIUM")
    if named:
        return shutil.which(named)
    return next((path for b in BROWSERS if (path := shutil.which(b))), None)


@dataclass
class Page:
    """One tab: commands in, events collected."""

    ws: ClientConnection
    errors: list[str] = field(default_factory=list)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Run one DevTools command; events that arrive meanwhile are recorded."""
        call_id = next(self._ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv(timeout=30))
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self._event(message)

    def _event(self, message: dict[str, Any]) -> None:
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {text}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {args}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            entry = params["entry"]
            self.errors.append(f"log {entry['source']}: {entry['text']} {entry.get('url', '')}")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, within: float = 20.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(f"{expression} still falsy after {within:g}s; page errors: {self.errors}")

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path


@contextmanager
def chromium(tmp_path: Path, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless Chromium with one blank tab, its protocol enabled; stopped afterwards."""
    binary = browser_binary()
    if binary is None:
        pytest.fail("no Chromium: `make test` installs Debian's chromium package (mk/monitoring.mk)")
    profile = tmp_path / "chromium-profile"
    argv = [
        binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--mute-audio",
        "--disable-extensions", "--disable-background-networking", "--disable-component-update",
        f"--user-data-dir={profile}", "--remote-debugging-port=0", f"--window-size={width},{height}", "about:blank",
    ]  # fmt: skip
    child = procs.start(argv, log=tmp_path / "chromium.log")
    try:
        port = _devtools_port(profile, child)
        targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        with connect(url, max_size=64 * 1024 * 1024, open_timeout=20) as ws:
            page = Page(ws)
            for domain in ("Runtime", "Log", "Page"):
                page.send(f"{domain}.enable")
            page.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            yield page
    finally:
        child.stop(5.0)


def _devtools_port(profile: Path, child: procs.Child, within: float = 30.0) -> int:
    """Chromium writes the port it chose to DevToolsActivePort in its profile."""
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text().strip():
            return int(marker.read_text().split()[0])
        if not child.alive():
            raise RuntimeError(f"chromium exited:\n{child.log_tail()}")
        time.sleep(0.1)
    raise TimeoutError(f"chromium did not open its DevTools port:\n{child.log_tail()}")
