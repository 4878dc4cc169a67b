"""The upstream HTTP client behind the small interface the proxy and health checks use.

The client library was chosen by measurement (docs/gateway.md): aiohttp hands out a
pooled connection in constant time and costs a fifteenth of httpx's CPU per request
(httpx's async pool scans every pooled connection on every request). The interface
also names the failures the proxy acts on, so it never sees a library's exception zoo:

* :class:`Unreachable` — no connection could be made: the request never reached a worker.
* :class:`StaleConnection` — a pooled connection was closed by the worker before it sent
  any response byte ("server disconnected"): safe to send again on a fresh connection.
* :class:`UpstreamTimeout` — connected, but the worker sent nothing in time.
* :class:`UpstreamBroken` — anything else that broke the exchange.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp


class UpstreamError(Exception):
    """The exchange with a worker failed."""


class Unreachable(UpstreamError):
    pass


class StaleConnection(UpstreamError):
    pass


class UpstreamTimeout(UpstreamError):
    pass


class UpstreamBroken(UpstreamError):
    pass


class UpstreamResponse(Protocol):
    status: int
    content_type: str

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives (any framing); raises :class:`UpstreamError` subclasses."""
        ...

    async def release(self) -> None:
        """Done with the response: the connection returns to the pool, or closes if unread."""
        ...


class UpstreamClient(Protocol):
    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool
    ) -> UpstreamResponse: ...

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


def _translate(exc: BaseException, *, sending: bool = False) -> UpstreamError:
    """``sending``: raised before the worker answered, so nothing of the request was served."""
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return StaleConnection(str(exc) or "server disconnected")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return Unreachable(str(exc) or type(exc).__name__)
    if sending and isinstance(exc, aiohttp.ClientOSError | aiohttp.ClientConnectionResetError):
        # The connection broke while the request was written ("Can not write request body": a
        # pooled connection the worker closed as it shut down): sent again, as a stale one is.
        return StaleConnection(str(exc) or type(exc).__name__)
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamTimeout(str(exc) or type(exc).__name__)
    return UpstreamBroken(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


_FAILURES = (aiohttp.ClientError, TimeoutError, OSError)


class _Response:
    __slots__ = ("_resp", "content_type", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status = resp.status
        self.content_type = resp.headers.get("content-type", "application/json")

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _FAILURES as exc:
            raise _translate(exc) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while chunk := await content.readany():
                yield chunk
        except _FAILURES as exc:
            raise _translate(exc) from None

    async def release(self) -> None:
        if self._resp.content.is_eof():
            self._resp.release()
        else:  # left mid-answer: close, so the worker sees the client go and stops generating
            self._resp.close()


class AiohttpClient:
    """One pooled aiohttp session. No total timeout: a long healthy stream is never cut.

    Non-streaming requests may wait ``first_byte_timeout_s`` for their answer; a stream may
    be silent for at most ``stream_idle_timeout_s`` between two chunks (aiohttp's socket
    read timeout, so no timer task per chunk).
    """

    def __init__(
        self,
        *,
        max_connections: int,
        keepalive_s: float,
        connect_timeout_s: float,
        first_byte_timeout_s: float,
        stream_idle_timeout_s: float,
    ) -> None:
        connector = aiohttp.TCPConnector(
            limit=max_connections, limit_per_host=0, keepalive_timeout=keepalive_s
        )
        # ``connect`` (which includes waiting for a pooled connection) is unbounded on purpose:
        # admission control keeps requests in flight within the pool, so a wait there would be
        # local saturation, never a worker failure. Only the socket connect is timed.
        self._json = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout_s, sock_read=first_byte_timeout_s
        )
        self._stream = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=connect_timeout_s, sock_read=stream_idle_timeout_s
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._json,
            # No skip_auto_headers: naming any sends aiohttp down a slow path on every request
            # (a copy of the headers); the proxy sets accept-encoding itself.
            auto_decompress=False,
            trust_env=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, stream: bool
    ) -> UpstreamResponse:
        try:
            resp = await self._session.post(
                url, data=body, headers=headers, timeout=self._stream if stream else self._json
            )
        except _FAILURES as exc:
            raise _translate(exc, sending=True) from None
        return _Response(resp)

    async def get(self, url: str, timeout_s: float) -> tuple[int, bytes]:
        try:
            async with self._session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return resp.status, await resp.read()
        except _FAILURES as exc:
            raise _translate(exc) from None

    async def close(self) -> None:
        await self._session.close()
