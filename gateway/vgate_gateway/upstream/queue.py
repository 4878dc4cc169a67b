"""A model's queue as data, and the order it is served in.

A :class:`Waiting` request holds its place until a worker can take it; the
:class:`ModelQueue` bounds how many wait and how many body bytes they hold. Which waiting
request goes next is a policy, a pure function over the queue's state
(:func:`next_index`); the dispatcher (:mod:`vgate_gateway.upstream.dispatch`) does the
waiting and the waking around it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from vgate_gateway.protocol import Request
from vgate_gateway.upstream.pool import Upstream


@dataclass(eq=False)
class Waiting:
    """One request waiting for a worker; ``granted`` gets the worker it is dispatched to."""

    req: Request
    since: float
    granted: asyncio.Future[Upstream] = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.req.body)


@dataclass(frozen=True)
class Bounds:
    """How much one model's queue may hold, and for how long."""

    max_requests: int
    max_bytes: int
    timeout_s: float


class QueueFull(Exception):
    """The queue is at one of its bounds; the message says which."""


class ModelQueue:
    """The requests waiting for one model's workers, in arrival order."""

    def __init__(self, model: str, bounds: Bounds) -> None:
        self.model = model
        self.bounds = bounds
        self.waiting: deque[Waiting] = deque()
        self.bytes = 0
        #: Requests that waited and were dispatched, refused at a bound, or timed out.
        self.dispatched = 0
        self.rejected = 0
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self.waiting)

    def add(self, waiting: Waiting) -> None:
        """Queue ``waiting`` at the back, or raise :class:`QueueFull` (counted) without queueing it."""
        bounds = self.bounds
        if len(self.waiting) >= bounds.max_requests:
            self.rejected += 1
            raise QueueFull(f"{len(self.waiting)} requests are already waiting for model '{self.model}'")
        if self.bytes + waiting.size > bounds.max_bytes:
            self.rejected += 1
            raise QueueFull(f"the requests waiting for model '{self.model}' hold {self.bytes} bytes")
        self.waiting.append(waiting)
        self.bytes += waiting.size

    def take(self, index: int) -> Waiting:
        """Remove and return the request at ``index`` (for dispatch)."""
        waiting = self.waiting[index]
        del self.waiting[index]
        self.bytes -= waiting.size
        return waiting

    def drop(self, waiting: Waiting) -> bool:
        """Remove a request that gave up (timed out, or its client left); False if already gone."""
        try:
            self.waiting.remove(waiting)
        except ValueError:
            return False
        self.bytes -= waiting.size
        return True

    def oldest_wait_s(self, now: float) -> float:
        return now - self.waiting[0].since if self.waiting else 0.0


def next_index(waiting: Sequence[Waiting]) -> int:
    """Which waiting request a free worker takes next: the one that has waited longest (FIFO)."""
    return 0
