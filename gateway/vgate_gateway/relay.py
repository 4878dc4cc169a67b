"""The streaming response that relays an SSE answer to the client."""

from __future__ import annotations

from collections.abc import AsyncIterable, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from vgate_gateway.sse import HEADERS, MEDIA_TYPE


class RelayResponse(StreamingResponse):
    """A streaming response that always closes its source, even when the client left mid-send.

    It does not listen for the client leaving itself (Starlette's version starts a task
    group per response for that): the OpenAI endpoints watch for it once per request and
    cancel the whole answer, this stream included.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def event_stream(events: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> RelayResponse:
    """An SSE response relaying ``events``, with the stream headers plus ``headers``."""
    return RelayResponse(events, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})
