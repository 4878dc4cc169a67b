"""A real ``redis-server`` on a free loopback port, started and stopped by the test.

``make test`` provides it (mk/redis.mk); :mod:`vgate.redis_server` says where it is and how to run it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from vgate import procs, waiting
from vgate import redis_server as local_redis
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
        binary = local_redis.binary()
        if binary is None:
            pytest.fail(local_redis.MISSING)
        child = self.child = procs.start(local_redis.argv(binary, self.port), log=self.log_path)

        def pong() -> bool:
            if not child.alive():
                raise RuntimeError(f"redis-server stopped:\n{child.log_tail()}")
            return self.ping()

        waiting.wait_for(pong, "redis-server to answer PING", within=timeout, interval=0.05)
        return self

    def ping(self) -> bool:
        return local_redis.ping(self.port)

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
