"""The gateway's own CPU per request, without its HTTP server or client.

``make bench-proxy`` measures V-Gate end to end: uvicorn serving, the gateway's own layers
(request ids, guard, admission, pipeline, routing, proxy), and aiohttp calling the worker.
This splits out the middle part. The shipped app, as ``build_app`` makes it for the default
settings, is driven in-process: each request is one ASGI call with the same chat body the
wrk cases send, answered by an in-memory worker that returns the canned JSON at once. The
difference to the end-to-end figure is what the server, the client and the event loop
cost, which no change to the gateway's own code can remove.

Run in a child process pinned to the core the systems under test get, so it is measured
the same way; prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator, Mapping, MutableMapping
from typing import Any

from vgate.waiting import eventually
from vgate_gateway.app import build_app, tune_gc
from vgate_gateway.discovery.static import StaticDiscovery
from vgate_gateway.settings import GatewaySettings


class _Answer:
    """One canned upstream answer, read at once."""

    content_type = "application/json"

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self._body = body

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def release(self) -> None:
        return None


class InMemoryWorkers:
    """Workers serving ``model`` that answer every request with ``answer``, always healthy."""

    def __init__(self, model: str, answer: bytes) -> None:
        self._answer = _Answer(200, answer)
        card = {"id": model, "object": "model", "max_model_len": 4096}
        self._models = json.dumps({"object": "list", "data": [card]}).encode()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool) -> _Answer:
        return self._answer

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        return 200, self._models if url.endswith("/v1/models") else b""

    async def close(self) -> None:
        return None


async def _lifespan(app: Any) -> tuple[asyncio.Queue[dict[str, str]], asyncio.Task[None]]:
    inbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, inbox.get, outbox.put))
    started = await outbox.get()
    if started["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"the gateway did not start: {started}")
    return inbox, task


async def measure(body: bytes, answer: bytes, requests: int) -> dict[str, Any]:
    workers = InMemoryWorkers(json.loads(body)["model"], answer)
    settings = GatewaySettings(endpoints=["http://127.0.0.1:9001", "http://127.0.0.1:9002"])
    endpoints = StaticDiscovery(settings.endpoints)
    app = build_app(settings, discovery=endpoints, clients=lambda: (workers, workers))
    inbox, lifespan = await _lifespan(app)
    try:
        state = app.state
        assert state is not None
        await eventually(
            state.pool.models, "the gateway to see its in-memory workers", within=10, interval=0.01
        )
        tune_gc()
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"authorization", b"Bearer bench"),
            (b"content-length", str(len(body)).encode()),
        ]
        statuses: dict[int, int] = {}

        async def one() -> None:
            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "root_path": "",
                "headers": list(headers),
                "client": ("127.0.0.1", 40000),
                "server": ("127.0.0.1", 8000),
                "state": {},
            }
            delivered = False

            async def receive() -> dict[str, Any]:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                await asyncio.Event().wait()  # the client never leaves
                raise AssertionError("unreachable")

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses[message["status"]] = statuses.get(message["status"], 0) + 1

            await app(scope, receive, send)

        for _ in range(min(1000, requests)):  # warm: caches of label children, routing tables
            await one()
        statuses.clear()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(requests):
            await one()
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        await lifespan
    if set(statuses) != {200}:
        raise RuntimeError(f"the in-memory run did not answer 200 throughout: {statuses}")
    return {
        "requests": requests,
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "wall_s": round(wall, 2),
    }


def main(argv: list[str]) -> int:
    """``python -m bench.own BODY_FILE ANSWER_FILE [REQUESTS]``"""
    import uvloop

    body = open(argv[0], "rb").read()  # noqa: SIM115
    answer = open(argv[1], "rb").read()  # noqa: SIM115
    requests = int(argv[2]) if len(argv) > 2 else 20_000
    print(json.dumps(uvloop.run(measure(body, answer, requests))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
