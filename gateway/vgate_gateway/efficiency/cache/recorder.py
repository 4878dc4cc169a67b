"""Cache entries made from a worker's answer: a JSON body checked whole, a stream as it passes."""

from __future__ import annotations

import json

from vgate_gateway.efficiency.cache.entry import Entry, Stamp
from vgate_gateway.efficiency.cache.policy import CACHEABLE_FINISH, response_cacheable
from vgate_gateway.protocol import Kind, Usage
from vgate_gateway.sse import MEDIA_TYPE, EventSplitter, event_data


def response_complete(kind: Kind, body: bytes) -> Stamp | None:
    """The stamp of a complete, successful JSON answer worth storing, or None."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not response_cacheable(kind, answer):
        return None
    return Stamp.of(body)


class StreamRecorder:
    """Keeps a stream's SSE bytes as they pass by, for storing once it ended well.

    Gives up (``result()`` is None) on an error event, a missing ``[DONE]``, a choice that
    did not finish with ``stop``/``length``, or more than ``max_bytes`` of stream: such a
    stream is forwarded, not cached.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._seen = 0
        self._events = EventSplitter()
        self._first = b""
        self._finished: dict[int, str | None] = {}
        self._done = False
        self._failed = max_bytes <= 0

    def feed(self, data: bytes) -> None:
        """Consume the next bytes of the stream, in any framing."""
        if self._failed:
            return
        self._seen += len(data)
        if self._seen > self._max_bytes:
            self._failed, self._parts = True, []
            return
        self._parts.append(data)
        for event in self._events.feed(data):
            if payload := event_data(event):
                self._on_data(payload)

    def _on_data(self, payload: bytes) -> None:
        if payload == b"[DONE]":
            self._done = True
            return
        try:
            chunk = json.loads(payload)
        except ValueError:
            self._failed = True
            return
        if not isinstance(chunk, dict) or "error" in chunk:
            self._failed = True
            return
        self._first = self._first or payload
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            reason = choice.get("finish_reason")
            if reason is not None or index not in self._finished:
                self._finished[index] = reason

    def result(self, usage: Usage | None = None) -> Entry | None:
        """The stream as an entry (with the ``usage`` read as it passed), or None when it should not be replayed."""
        if self._failed or not self._done or not self._finished:
            return None
        if any(reason not in CACHEABLE_FINISH for reason in self._finished.values()):
            return None
        return Entry(b"".join(self._parts), Stamp.of(self._first), MEDIA_TYPE, usage)
