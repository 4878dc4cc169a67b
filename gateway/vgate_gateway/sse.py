"""Server-sent events, as OpenAI-compatible servers send them.

The gateway relays events verbatim; it only needs to find event boundaries (so
an error can follow a complete event, never a torn one) and peek at what an
event says for metrics. Bytes in, bytes out: the response that relays a stream is
:mod:`vgate_gateway.relay`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DONE = b"data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"
#: Sent with every stream: no caching, and no buffering by a reverse proxy in front (nginx).
HEADERS: Mapping[str, str] = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class EventSplitter:
    """Cuts a byte stream into complete SSE events (each ending in a blank line).

    Linear in the bytes fed: each chunk is scanned once by index, and the unfinished
    tail is the only thing kept between chunks.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        events = []
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            events.append(buf[start : end + 2])
            start = end + 2
        self._buf = buf[start:] if start else buf
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._buf


class EventFramer:
    """Passes a byte stream on in runs of whole events, without cutting them apart.

    The relay forwards what a worker wrote as it arrives, but never half an event: an
    error event it may have to add must follow a complete one. One search per chunk.
    """

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """The complete events now available (possibly several, possibly none)."""
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        end += 2
        if end == len(buf):
            self._buf = b""
            return buf
        self._buf = buf[end:]
        return buf[:end]

    @property
    def pending(self) -> bytes:
        return self._buf


def usage_in(events: bytes) -> Any:
    """The ``usage`` object of the last event in ``events`` that reports one, or None.

    Only events that may hold one are parsed: vLLM sends usage once, in the last chunk
    before ``[DONE]`` (every chunk with ``continuous_usage_stats``).
    """
    for event in reversed(EventSplitter().feed(events)):
        if b'"completion_tokens"' not in event:
            continue
        try:
            obj: Any = json.loads(event_data(event))
        except ValueError:
            continue
        usage = obj.get("usage") if isinstance(obj, dict) else None
        if isinstance(usage, dict):
            return usage
    return None


def error_event(events: bytes) -> bool:
    """Whether ``events`` holds an OpenAI error event (parsed only when it might)."""
    if b'"error"' not in events:
        return False
    for event in EventSplitter().feed(events):
        data = event_data(event)
        if b'"error"' in data and inspect_event(event).error:
            return True
    return False


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
