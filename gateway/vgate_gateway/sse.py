"""Server-sent events, as OpenAI-compatible servers send them, and the response that relays them.

The gateway relays events verbatim; it only needs to find event boundaries (so
an error can follow a complete event, never a torn one) and peek at what an
event says for metrics.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
#: Sent with every stream: no caching, and no buffering by a reverse proxy in front (nginx).
HEADERS: Mapping[str, str] = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class RelayResponse(StreamingResponse):
    """A streaming response that always closes its source, even when the client left mid-send."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def event_stream(events: AsyncIterable[bytes], headers: Mapping[str, str] | None = None) -> RelayResponse:
    """An SSE response relaying ``events``, with the stream headers plus ``headers``."""
    return RelayResponse(events, media_type=MEDIA_TYPE, headers={**HEADERS, **(headers or {})})


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each ending in a blank line)."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        self._buf += chunk
        if b"\r\n" in self._buf:
            self._buf = self._buf.replace(b"\r\n", b"\n")
        events = []
        while True:
            end = self._buf.find(b"\n\n")
            if end < 0:
                return events
            events.append(self._buf[: end + 2])
            self._buf = self._buf[end + 2 :]

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buf


@dataclass(frozen=True)
class EventInfo:
    done: bool = False
    #: Generated tokens this event carries (vLLM sends one chunk per decode step).
    tokens: int = 0
    usage_completion_tokens: int | None = None
    error: bool = False


def event_data(event: bytes) -> bytes:
    """The ``data:`` payload of one complete event (empty for a comment or keep-alive)."""
    return b"".join(line[5:].strip() for line in event.split(b"\n") if line.startswith(b"data:"))


def inspect_event(event: bytes) -> EventInfo:
    """What one SSE event says, for accounting only."""
    data = event_data(event)
    if not data:
        return EventInfo()
    if data == b"[DONE]":
        return EventInfo(done=True)
    try:
        obj: Any = json.loads(data)
    except ValueError:
        return EventInfo()
    if not isinstance(obj, dict):
        return EventInfo()
    if "error" in obj:
        return EventInfo(error=True)
    usage = obj.get("usage")
    completion = usage.get("completion_tokens") if isinstance(usage, dict) else None
    tokens = 0
    for choice in obj.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        delta = choice.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if text or (isinstance(delta, dict) and delta.get("tool_calls")):
            tokens += 1
    return EventInfo(
        tokens=tokens, usage_completion_tokens=completion if isinstance(completion, int) else None
    )
