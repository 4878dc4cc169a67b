"""Admission control: a bounded number of requests in flight, a short queue, then a fast refusal.

Like an Envoy circuit breaker on pending and active requests: when this process is
saturated, the excess is refused at once with a 503 and ``Retry-After`` (which the
OpenAI clients honour) instead of piling up until every request times out. Local
saturation is never counted against a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from vgate_gateway.errors import OpenAIError


class Admission:
    def __init__(self, limit: int, queue: int, queue_timeout_s: float, retry_after_s: int) -> None:
        self.limit = limit
        self.queue_limit = queue
        self.queue_timeout_s = queue_timeout_s
        self.retry_after_s = retry_after_s
        self.inflight = 0
        self.rejected_total = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def _refuse(self, why: str) -> OpenAIError:
        self.rejected_total += 1
        return OpenAIError(
            503,
            f"The gateway is at capacity ({why}). Retry shortly.",
            code="gateway_overloaded",
            type_="service_unavailable_error",
            headers={"Retry-After": str(self.retry_after_s)},
        )

    async def acquire(self) -> None:
        """Take a slot, waiting at most ``queue_timeout_s`` for one; else raise the 503."""
        if self.inflight < self.limit and not self._waiting:
            self.inflight += 1
            return
        if len(self._waiting) >= self.queue_limit or self.queue_timeout_s <= 0:
            raise self._refuse(f"{self.inflight} requests in flight, {len(self._waiting)} queued")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            async with asyncio.timeout(self.queue_timeout_s):
                await waiter  # release() hands its slot over: inflight stays counted
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self.release()  # the slot arrived just as we gave up: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise self._refuse(f"no slot freed within {self.queue_timeout_s * 1000:g} ms") from None
            raise

    def release(self) -> None:
        """Give the slot back, or straight to the longest-waiting request."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.inflight -= 1
