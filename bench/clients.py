"""Upstream HTTP clients compared the way the gateway uses one (run by ``make bench-proxy`` with ``--clients``).

Each client sends the same POST (a chat completion body) to the canned nginx upstream
from ``concurrency`` tasks sharing one pooled client, in one process pinned to one
core on uvloop, and reports requests per second and CPU per request. Run with the
benchmark virtualenv's interpreter, which has every candidate installed::

    python -m bench.clients URL [--requests N] [--concurrency C]

Prints one JSON object: client name -> {"rps", "cpu_us_per_request", "version"}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from typing import Any

BODY = json.dumps(
    {"model": "bench", "messages": [{"role": "user", "content": "Where is my parcel?"}], "max_tokens": 16}
).encode()
HEADERS = {"content-type": "application/json"}

Send = Callable[[], Awaitable[int]]


async def _httpx(url: str, conns: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import httpx

    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=conns, max_keepalive_connections=conns))

    async def send() -> int:
        r = await client.post(url, content=BODY, headers=HEADERS)
        return r.status_code

    return send, client.aclose


async def _aiohttp(url: str, conns: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conns), auto_decompress=False)

    async def send() -> int:
        async with session.post(url, data=BODY, headers=HEADERS) as r:
            await r.read()
            return r.status

    return send, session.close


async def _aiosonic(url: str, conns: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiosonic

    client = aiosonic.HTTPClient()

    async def send() -> int:
        r = await client.post(url, data=BODY, headers=HEADERS)
        await r.content()
        return int(r.status_code)

    async def close() -> None:
        await client.connector.cleanup()

    return send, close


async def _pyreqwest(url: str, conns: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(conns).build()

    async def send() -> int:
        r = await client.post(url).body_bytes(BODY).headers(HEADERS).build().send()
        await r.bytes()
        return int(r.status)

    async def close() -> None:
        await client.close()

    return send, close


async def _pyreqwest_streamed(url: str, conns: int) -> tuple[Send, Callable[[], Awaitable[None]]]:
    from pyreqwest.client import ClientBuilder

    client = ClientBuilder().max_connections(conns).build()

    async def send() -> int:
        async with client.post(url).body_bytes(BODY).headers(HEADERS).build_streamed() as r:
            while await r.body_reader.read_chunk() is not None:
                pass
            return int(r.status)

    async def close() -> None:
        await client.close()

    return send, close


CLIENTS: dict[
    str, tuple[str, Callable[[str, int], Awaitable[tuple[Send, Callable[[], Awaitable[None]]]]]]
] = {
    "httpx": ("httpx", _httpx),
    "aiohttp": ("aiohttp", _aiohttp),
    "aiosonic": ("aiosonic", _aiosonic),
    "pyreqwest": ("pyreqwest", _pyreqwest),
    "pyreqwest-streamed": ("pyreqwest", _pyreqwest_streamed),
}


def _busy(us: float) -> None:
    """Stand-in for the gateway's own Python work around each upstream call."""
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


async def measure(name: str, url: str, requests: int, concurrency: int, work_us: float = 0) -> dict[str, Any]:
    make = CLIENTS[name][1]
    send, close = await make(url, concurrency)
    left = requests
    failures = 0

    async def loop() -> None:
        nonlocal left, failures
        while left > 0:
            left -= 1
            if work_us:
                _busy(work_us)
            if await send() != 200:
                failures += 1

    try:
        for _ in range(200):  # warm the pool
            await send()
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await close()
    return {
        "version": version(CLIENTS[name][0]),
        "rps": round(requests / wall),
        "cpu_us_per_request": round(cpu / requests * 1e6, 1),
        "failures": failures,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--requests", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--clients", default=",".join(CLIENTS))
    p.add_argument("--work-us", type=float, default=0, help="Python work per request besides the call")
    args = p.parse_args()
    import uvloop

    results = {}
    for name in args.clients.split(","):
        try:
            results[name] = uvloop.run(measure(name, args.url, args.requests, args.concurrency, args.work_us))
        except Exception as exc:  # a candidate that cannot run here is reported, not fatal
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
