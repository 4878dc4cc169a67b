"""Child processes on loopback: start one, wait until it answers, stop it without leaving orphans.

``vgate dev``, the benchmarks and the test suite start their ``vgate`` (and redis, nginx)
processes with these helpers, so every child is stopped the same way: SIGTERM, then SIGKILL
for what is still running after a grace period, sent to the child's whole process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from vgate.waiting import wait_for


class ProcessExited(RuntimeError):
    """The process behind the polled URL stopped before it answered."""


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def parse_cpus(text: str, *, here: bool = True) -> frozenset[int]:
    """A CPU list as ``taskset -c`` writes it (``1``, ``0,2``, ``2-3``); with ``here``, checked
    against the CPUs this process may run on. Raises ``ValueError`` with the reason."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if sep else low)
        except ValueError:
            raise ValueError(f"{text!r} is not a CPU list such as 1, 0,2 or 2-3") from None
        if first < 0 or last < first:
            raise ValueError(f"{text!r} is not a CPU list such as 1, 0,2 or 2-3")
        cpus.update(range(first, last + 1))
    if here and not cpus <= (allowed := os.sched_getaffinity(0)):
        missing = ",".join(map(str, sorted(cpus - allowed)))
        raise ValueError(f"CPU {missing} is not one this process may run on ({_cpu_text(allowed)})")
    return frozenset(cpus)


def _cpu_text(cpus: set[int] | frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """``argv`` run on ``cpus`` (a :func:`parse_cpus` list) through ``taskset``; as it is for ``None``.

    Raises ``ValueError`` where ``taskset`` (util-linux) is missing: a pinned run that silently
    ran unpinned would measure something else.
    """
    if cpus is None:
        return list(argv)
    if shutil.which("taskset") is None:
        raise ValueError("pinning to CPUs needs taskset (util-linux), which is not installed")
    return ["taskset", "-c", _cpu_text(parse_cpus(cpus)), *argv]


def vgate_argv(*args: str) -> list[str]:
    """``vgate ARGS`` run by this interpreter, as a container runs the ``vgate`` entry point."""
    return [sys.executable, "-m", "vgate", *args]


@dataclass
class Child:
    """A started process and, where its output goes to a file, that log."""

    popen: subprocess.Popen[bytes]
    log: Path | None = None
    #: In a process group of its own: signals reach its children too (uvicorn workers, vLLM's engine).
    group: bool = True

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return self.log.read_text(errors="replace")[-chars:]

    def wait_ready(self, url: str, timeout: float = 30.0, *, status: int = 200) -> None:
        """Poll ``url`` until it answers ``status``; fail with the log's tail if the process stops."""
        detail = self.log_tail if self.log is not None else None
        wait_http(url, timeout, status=status, alive=self.alive, detail=detail)

    def send(self, sig: int) -> None:
        try:
            if self.group:
                os.killpg(self.popen.pid, sig)
            else:
                self.popen.send_signal(sig)
        except ProcessLookupError:
            pass  # exited between the check and the signal

    def stop(self, grace: float = 10.0, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM), SIGKILL after ``grace`` seconds; returns the exit status."""
        stop_all([self], grace, sig=sig)
        return self.popen.returncode


def start(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    group: bool = True,
    cwd: Path | None = None,
) -> Child:
    """Start ``argv``; its output is appended to ``log`` (or goes where this process's goes).

    With ``group`` (the default) it runs in a session of its own, so stopping it stops its
    children too. ``vgate dev`` keeps its children in its own group instead: a Ctrl-C in the
    terminal, or a signal to the group, then reaches every component at once.
    """
    if log is None:
        popen = subprocess.Popen(list(argv), env=env, cwd=cwd, start_new_session=group)
    else:
        with log.open("ab") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(
                list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=group
            )
    return Child(popen, log, group)


@contextmanager
def running(
    argv: Sequence[str],
    ready_url: str | None = None,
    *,
    env: Mapping[str, str] | None = None,
    log: Path | None = None,
    timeout: float = 60.0,
    grace: float = 10.0,
    cwd: Path | None = None,
) -> Iterator[Child]:
    """Run ``argv`` for the duration of the block, once ``ready_url`` (if any) answers 200."""
    child = start(argv, env=env, log=log, cwd=cwd)
    try:
        if ready_url is not None:
            child.wait_ready(ready_url, timeout)
        yield child
    finally:
        child.stop(grace)


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

    def answered() -> bool:
        if alive is not None and not alive():
            raise ProcessExited(_message(f"{url}: the process stopped before it answered", detail))
        got = httpx.get(url, timeout=2.0).status_code
        if got != status:
            raise _OtherStatus(got)
        return True

    try:
        wait_for(answered, f"{url} to answer {status}", within=timeout, retry=(httpx.HTTPError, _OtherStatus))
    except TimeoutError as exc:
        raise TimeoutError(_message(str(exc), detail)) from None


class _OtherStatus(Exception):
    """A status other than the awaited one: not yet."""


def _message(text: str, detail: Callable[[], str] | None) -> str:
    return f"{text}\n{detail()}" if detail is not None else text


def stop_all(children: Sequence[Child], grace: float = 10.0, *, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to every child still running, then SIGKILL those not gone within ``grace`` in all."""
    for child in children:
        if child.alive():
            child.send(sig)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.send(signal.SIGKILL)
            child.popen.wait()
