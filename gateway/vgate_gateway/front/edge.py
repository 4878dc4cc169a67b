"""Where an :class:`~vgate_gateway.protocol.Answer` becomes ASGI messages, and nowhere else.

The edge adds the headers every answer carries (``x-request-id``, the key's
``x-ratelimit-*``), sends a whole body with its length or relays a stream run by run, and
always closes a stream's source, even when the client left mid-send (which closes the
upstream call, so the worker stops generating).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio
import orjson

from vgate_gateway.protocol import Answer

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

#: nginx's "client closed request": logged when the client left before the answer.
CLIENT_CLOSED = 499
#: How long an answer runs before the gateway starts watching for its client to leave.
#: A client that left sooner is noticed then: its worker generates at most this long for it.
WATCH_AFTER_S = 0.2


class Edge:
    """Sends one answer on ``send``; remembers its status and whether it has started."""

    __slots__ = ("_send", "error_body", "extra", "model", "started", "status")

    def __init__(self, send: Send, request_id: bytes) -> None:
        self._send = send
        self.status = 500
        self.started = False
        #: The body of an error answer (for the recent errors), and the model asked for.
        self.error_body: bytes | None = None
        self.model: str | None = None
        #: Headers every answer on this connection's request carries.
        self.extra: list[tuple[bytes, bytes]] = [(b"x-request-id", request_id)]

    async def send(self, answer: Answer, *, strip_usage: bool = False) -> None:
        headers = [_ENCODED.get(item) or _encode(item) for item in answer.headers.items()]
        headers += self.extra
        self.status = answer.status
        self.started = True
        if answer.events is None:
            if answer.status >= 400:
                self.error_body = answer.body
            headers.append((b"content-length", str(len(answer.body)).encode()))
            await self._send({"type": "http.response.start", "status": answer.status, "headers": headers})
            await self._send({"type": "http.response.body", "body": answer.body, "more_body": False})
            return
        events = answer.events
        try:
            await self._send({"type": "http.response.start", "status": answer.status, "headers": headers})
            async for run in events:
                if strip_usage and b'"usage"' in run:
                    run = without_usage_chunk(run)
                await self._send({"type": "http.response.body", "body": run, "more_body": True})
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            with anyio.CancelScope(shield=True):
                await events.aclose()  # type: ignore[attr-defined]

    async def closed(self) -> None:
        """The client left before its answer: recorded (and sent, if anyone still listens) as 499."""
        if not self.started:
            await self.send(Answer(CLIENT_CLOSED, headers={}))


#: Header lines already encoded: most answers carry the same few (content type, cache result).
_ENCODED: dict[tuple[str, str], tuple[bytes, bytes]] = {}


def _encode(item: tuple[str, str]) -> tuple[bytes, bytes]:
    encoded = (item[0].encode("latin-1"), item[1].encode("latin-1"))
    if len(_ENCODED) < 256:
        _ENCODED[item] = encoded
    return encoded


def without_usage_chunk(run: bytes) -> bytes:
    """``run`` of SSE events less the usage-only chunk (choices empty) the client did not ask for."""
    kept = []
    for event in run.split(b"\n\n"):
        if b'"usage"' in event and event.startswith(b"data: "):
            try:
                chunk = orjson.loads(event[6:])
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict) and chunk.get("usage") is not None and not chunk.get("choices"):
                continue
        kept.append(event)
    return b"\n\n".join(kept)


class Watched:
    """One request whose client may leave before its answer is done (see :class:`ClientWatch`)."""

    __slots__ = ("left", "receive", "since", "task", "watcher")

    def __init__(self, task: asyncio.Task[Any], receive: Receive, since: float) -> None:
        self.task = task
        self.receive = receive
        self.since = since
        #: The client left: the task was cancelled for it.
        self.left = False
        self.watcher: asyncio.Future[Message] | None = None

    def watch(self) -> None:
        self.watcher = asyncio.ensure_future(self.receive())
        self.watcher.add_done_callback(self._on_message)

    def _on_message(self, done: asyncio.Future[Message]) -> None:
        if not done.cancelled() and done.exception() is None and done.result()["type"] == "http.disconnect":
            self.left = True
            self.task.cancel()

    def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.remove_done_callback(self._on_message)
            self.watcher.cancel()


class ClientWatch:
    """Cancels the work of requests whose client left before their answer was done.

    Most answers are done before anyone could leave, so a request is only noted when it
    starts (:meth:`start`, a dict entry, no task and no timer of its own). One timer per
    process looks at the oldest requests: a request still running after
    :data:`WATCH_AFTER_S` gets a watcher (a task reading its ``receive``), which cancels the
    request's task when the client disconnects.
    """

    def __init__(self) -> None:
        #: Requests not watched yet, oldest first (entries are added in time order).
        self._pending: dict[Watched, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def start(self, receive: Receive) -> Watched:
        """Note the running request (its task) reading ``receive``; :meth:`stop` when it is done."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        watched = Watched(task, receive, loop.time())
        self._pending[watched] = None
        if self._timer is None:
            self._timer = loop.call_at(watched.since + WATCH_AFTER_S, self._sweep, loop)
        return watched

    def stop(self, watched: Watched) -> None:
        """The request's answer is done (or it failed): nothing watches it any more."""
        self._pending.pop(watched, None)
        watched.stop()

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due = loop.time() - WATCH_AFTER_S
        ripe: list[Watched] = []
        for watched in self._pending:
            if watched.since > due:
                self._timer = loop.call_at(watched.since + WATCH_AFTER_S, self._sweep, loop)
                break
            ripe.append(watched)
        for watched in ripe:
            del self._pending[watched]
            watched.watch()
