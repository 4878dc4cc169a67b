"""In-memory workers behind the gateway's :class:`~vgate_gateway.upstream.client.UpstreamClient` interface.

Unit tests hand ``FakeUpstreams`` to ``build_app(clients=...)`` or to a ``HealthChecker``.
A handler sees each request and returns a :class:`Answer` (or raises one of the
client's errors, as a real client would for a refused connection).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from vgate_gateway.upstream.client import Unreachable, UpstreamError


@dataclass(frozen=True)
class Call:
    method: str
    url: str
    body: bytes
    headers: Mapping[str, str]

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def path(self) -> str:
        return urlsplit(self.url).path


@dataclass
class Answer:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    #: A streamed body, chunk by chunk; an exception in it breaks the stream there.
    stream: Sequence[bytes | UpstreamError] | None = None
    released: bool = field(default=False, compare=False)

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Answer:
        return cls(status, json.dumps(obj).encode())

    async def read(self) -> bytes:
        if self.stream is None:
            return self.body
        return b"".join([c async for c in self.chunks()])

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self.stream if self.stream is not None else [self.body]:
            if isinstance(chunk, UpstreamError):
                raise chunk
            yield chunk

    async def release(self) -> None:
        self.released = True


Handler = Callable[[Call], Answer]


class FakeUpstreams:
    """Routes each call to ``handler``; records the calls; hosts in ``down`` refuse connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.down: set[str] = set()
        self.calls: list[Call] = []

    def _call(self, call: Call) -> Answer:
        if call.host in self.down:
            raise Unreachable("connection refused")
        self.calls.append(call)
        return self.handler(call)

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool) -> Answer:
        return self._call(Call("POST", url, body, dict(headers)))

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        answer = self._call(Call("GET", url, b"", {}))
        return answer.status, await answer.read()

    async def close(self) -> None:
        pass
