"""Start ``vgate`` subcommands as real processes on free loopback ports.

Every process gets its own session so teardown kills the whole group (uvicorn
workers, vLLM engine cores): no orphan survives a failed test.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vgate import procs
from vgate.procs import free_port


@dataclass
class Proc:
    """A ``vgate`` process (started or not yet) and where it listens."""

    args: list[str]
    port: int
    env: dict[str, str]
    log_path: Path
    #: A gateway's internal port (/metrics, /stats, /docs, /openapi.json).
    internal_port: int | None = None
    child: procs.Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def internal_url(self) -> str:
        """The gateway's internal endpoints; other processes serve everything on ``url``."""
        return f"http://127.0.0.1:{self.internal_port}" if self.internal_port else self.url

    @property
    def popen(self) -> subprocess.Popen[bytes] | None:
        return self.child.popen if self.child is not None else None

    def spawn(self) -> Proc:
        """Start the process without waiting for it (start several, then wait for each)."""
        self.child = procs.start(procs.vgate_argv(*self.args), env=self.env, log=self.log_path)
        return self

    def start(self, ready_path: str = "/health", timeout: float = 30.0) -> Proc:
        self.spawn()
        wait_http(self.url + ready_path, timeout=timeout, proc=self)
        return self

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Send ``sig`` to the process group, SIGKILL after ``timeout``; the exit status."""
        return self.child.stop(timeout, sig=sig) if self.child is not None else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_http(url: str, timeout: float = 30.0, proc: Proc | None = None, status: int = 200) -> None:
    """Poll ``url`` until it answers ``status``; fail with the process log if it died."""
    if proc is not None and proc.child is not None:
        proc.child.wait_ready(url, timeout, status=status)
    else:
        procs.wait_http(url, timeout, status=status)


def make_proc(
    args: Sequence[str],
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    name: str | None = None,
) -> Proc:
    """A ``vgate ARGS --port PORT`` process, not started yet (a gateway also gets an internal port)."""
    port = port or free_port()
    label = name or "-".join(a for a in args[:2] if not a.startswith("-"))
    internal = free_port() if args and args[0] == "gateway" else None
    extra = ["--internal-port", str(internal)] if internal else []
    return Proc(
        args=[*args, "--port", str(port), *extra],
        port=port,
        internal_port=internal,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        log_path=tmp_path / f"{label}-{port}.log",
    )


@contextmanager
def running(
    procs: Sequence[Proc], ready_path: str = "/health", timeout: float = 30.0
) -> Iterator[list[Proc]]:
    """Start ``procs`` together, wait until each answers, stop them all afterwards."""
    try:
        for p in procs:
            p.spawn()
        for p in procs:
            wait_http(p.url + ready_path, timeout=timeout, proc=p)
        yield list(procs)
    finally:
        for p in procs:
            p.stop()


@contextmanager
def vgate_process(
    args: Sequence[str],
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    ready_path: str = "/health",
    timeout: float = 30.0,
    name: str | None = None,
) -> Iterator[Proc]:
    """Run ``vgate ARGS --port PORT`` for the duration of the block."""
    proc = make_proc(args, tmp_path, env=env, port=port, name=name)
    try:
        yield proc.start(ready_path=ready_path, timeout=timeout)
    finally:
        proc.stop()
