"""Child processes on loopback: a free port, a readiness poll, and a stop that leaves no orphan.

``vgate dev``, ``vgate bench`` and the test suite start the same ``vgate`` processes and
share these helpers.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence

import httpx


class ProcessExited(RuntimeError):
    """The process behind the polled URL stopped before it answered."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str,
    timeout: float = 30.0,
    *,
    status: int = 200,
    alive: Callable[[], bool] | None = None,
    detail: Callable[[], str] | None = None,
) -> None:
    """Poll ``url`` until it answers ``status``.

    Raises :class:`ProcessExited` as soon as ``alive()`` is false, :class:`TimeoutError` after
    ``timeout`` seconds; ``detail()`` (a log tail, where the log is) ends either message.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ProcessExited(_message(f"{url}: the process stopped before it answered", detail))
        try:
            response = httpx.get(url, timeout=2.0)
            if response.status_code == status:
                return
            last = response.status_code
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(
        _message(f"{url} did not answer {status} within {timeout:g}s (last: {last!r})", detail)
    )


def _message(text: str, detail: Callable[[], str] | None) -> str:
    return f"{text}\n{detail()}" if detail is not None else text


def stop_all(
    popens: Sequence[subprocess.Popen[bytes]], timeout: float = 10.0, *, group: bool = False
) -> None:
    """SIGTERM every process still running, then SIGKILL those not gone within ``timeout`` in all.

    With ``group`` the signals go to each process's group (started with ``start_new_session``),
    so grandchildren such as uvicorn workers stop too.
    """
    for p in popens:
        if p.poll() is None:
            _signal(p, signal.SIGTERM, group)
    deadline = time.monotonic() + timeout
    for p in popens:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal(p, signal.SIGKILL, group)
            p.wait()


def _signal(p: subprocess.Popen[bytes], sig: int, group: bool) -> None:
    try:
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    except ProcessLookupError:
        pass  # exited between the check and the signal
