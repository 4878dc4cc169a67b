"""In-flight deduplication: identical cacheable requests share one upstream call.

The first request for a key (the leader) starts a :class:`Flight`: a task, owned by no
client, that runs the upstream call and records the response head and body chunks.
Every request with the same key that arrives while the flight is open (a follower)
subscribes to it and receives the chunks recorded so far, then the live ones. Clients
come and go independently: the call continues while at least one subscriber remains
and is cancelled (closing the upstream connection) when the last one leaves. If the
call fails, every subscriber gets the same error at once.

Memory is bounded. The producer never waits for a subscriber; instead each subscriber may
lag at most ``max_lag_bytes`` behind the newest chunk. One that falls further behind (a
client that stopped reading) is dropped: its read raises :class:`SubscriberLagged` and the
others continue. A flight takes followers only while its whole body is within that bound
(a latecomer starts from the first byte), and chunks every subscriber has read are
forgotten, so a flight holds at most ``max_lag_bytes`` plus its newest chunk; at most
``max_flights`` keys are tracked (beyond that requests simply go upstream alone).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from prometheus_client import CollectorRegistry, Counter

from vgate_gateway.protocol import Answer

log = logging.getLogger(__name__)


class FlightWriter:
    """What a producer sees of its flight: it sets the head, then pushes body chunks."""

    def __init__(self, flight: Flight) -> None:
        self._flight = flight

    def start(self, head: Answer) -> None:
        """Publish the answer's head: status, headers and usage (exactly once, before any chunk)."""
        self._flight.set_head(head)

    def push(self, chunk: bytes) -> None:
        """Publish the next body chunk to every subscriber."""
        self._flight.push(chunk)


#: Runs the upstream call for a flight; returns when the body is complete.
Producer = Callable[[FlightWriter], Awaitable[None]]


class SubscriberLagged(Exception):
    """This subscriber fell too far behind the shared answer and was dropped from it."""


class Flight:
    """One upstream call and the part of its response some subscriber has not read yet."""

    def __init__(self, key: str, max_lag_bytes: int) -> None:
        self.key = key
        self.head: Answer | None = None
        self.error: BaseException | None = None
        self.done = False
        #: Still joinable by new followers.
        self.open = True
        self._chunks: deque[bytes] = deque()
        self._base = 0  # index of _chunks[0] in the whole body
        self._base_offset = 0  # byte offset of _chunks[0]
        self._pushed = 0  # bytes pushed so far
        self._max_lag = max_lag_bytes
        self._cursors: dict[int, int] = {}  # subscriber -> index of its next chunk
        self._offsets: dict[int, int] = {}  # subscriber -> byte offset of its next chunk
        self._dropped: set[int] = set()
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.on_close: Callable[[Flight], None] = lambda _f: None

    @property
    def subscribers(self) -> int:
        return len(self._cursors)

    @property
    def buffered(self) -> int:
        """Bytes held for subscribers that have not read them yet."""
        return self._pushed - self._base_offset

    def set_head(self, head: Answer) -> None:
        if self.head is not None:
            raise RuntimeError("the response head was already sent")
        self.head = head
        self._notify()

    def push(self, chunk: bytes) -> None:
        if self.head is None:
            raise RuntimeError("start() the response before pushing body chunks")
        # Lag is measured before the newest chunk: a whole JSON answer is one chunk.
        for token, offset in list(self._offsets.items()):
            if self._pushed - offset > self._max_lag:
                self._drop(token)
        if not self._cursors and self.task is not None:
            # Every client fell behind: nobody is left to answer.
            self.close_to_followers()
            self.task.cancel()
        self._chunks.append(chunk)
        self._pushed += len(chunk)
        if self._pushed > self._max_lag and self.open:
            # A latecomer would start beyond the lag bound: keep streaming to those already here.
            self.close_to_followers()
        self._trim()
        self._notify()

    def _drop(self, token: int) -> None:
        log.warning("a client of a shared stream fell %d bytes behind; dropping it", self._max_lag)
        self._cursors.pop(token, None)
        self._offsets.pop(token, None)
        self._dropped.add(token)

    def finish(self, error: BaseException | None = None) -> None:
        self.error = error
        self.done = True
        self.close_to_followers()
        self._trim()
        self._notify()

    def close_to_followers(self) -> None:
        if self.open:
            self.open = False
            self.on_close(self)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _trim(self) -> None:
        """Once nobody new can join, chunks every subscriber has read are dropped."""
        if self.open:
            return
        upto = (min(self._cursors.values()) if self._cursors else self._base + len(self._chunks)) - self._base
        for _ in range(upto):
            self._base_offset += len(self._chunks.popleft())
        self._base += upto

    async def wait_head(self) -> Answer:
        while self.head is None:
            if self.done:
                raise self.error or RuntimeError("the upstream call ended without a response")
            await self._changed.wait()
        return self.head

    async def read(self, token: int) -> AsyncIterator[bytes]:
        while True:
            if token in self._dropped:
                raise SubscriberLagged(f"fell more than {self._max_lag} bytes behind the shared answer")
            position = self._cursors[token]
            if position - self._base < len(self._chunks):
                chunk = self._chunks[position - self._base]
                self._cursors[token] = position + 1
                self._offsets[token] += len(chunk)
                self._trim()
                yield chunk
                continue
            if self.done:
                if self.error is not None:
                    raise self.error
                return
            await self._changed.wait()

    def subscribe(self, token: int) -> None:
        # Followers join only while nothing is trimmed: from the first chunk.
        self._cursors[token] = self._base
        self._offsets[token] = self._base_offset

    def unsubscribe(self, token: int) -> None:
        self._cursors.pop(token, None)
        self._offsets.pop(token, None)
        self._dropped.discard(token)
        self._trim()


class Subscription:
    """One client's view of a flight; :meth:`close` it when the client is done or gone."""

    def __init__(self, flight: Flight, token: int, leader: bool) -> None:
        self._flight = flight
        self._token = token
        self._closed = False
        #: Whether this request started the upstream call.
        self.leader = leader

    async def head(self) -> Answer:
        """Wait for the response head; raises the upstream error if the call failed first."""
        return await self._flight.wait_head()

    def chunks(self) -> AsyncIterator[bytes]:
        """The body from its first chunk, then live chunks until it is complete."""
        return self._flight.read(self._token)

    def close(self) -> None:
        """Leave the flight (idempotent); the last one to leave an unfinished call cancels it."""
        if self._closed:
            return
        self._closed = True
        flight = self._flight
        flight.unsubscribe(self._token)
        if flight.subscribers == 0 and not flight.done and flight.task is not None:
            log.debug("last client left; cancelling the shared upstream call")
            flight.close_to_followers()
            flight.task.cancel()


class DedupMetrics:
    """The deduplicator's Prometheus series, registered on the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.deduplicated = Counter(
            "vgate_deduplicated_requests_total",
            "Requests that shared an identical request's upstream call instead of making their own",
            ["endpoint"],
            registry=registry,
        )


#: Open flights tracked at once; beyond it identical requests each go upstream.
MAX_FLIGHTS = 1024


class Deduplicator:
    """Tracks open flights by request key."""

    def __init__(
        self,
        *,
        max_lag_bytes: int,
        max_flights: int = MAX_FLIGHTS,
        metrics: DedupMetrics | None = None,
    ) -> None:
        self.max_flights = max_flights
        self.max_lag_bytes = max_lag_bytes
        self._metrics = metrics
        self._flights: dict[str, Flight] = {}
        self._tokens = 0
        self.deduplicated = 0

    def __len__(self) -> int:
        return len(self._flights)

    def join(self, key: str, producer: Producer, endpoint: str = "") -> Subscription:
        """Join the open flight for ``key``, or start one running ``producer``."""
        existing = self._flights.get(key)
        if existing is None or not existing.open:
            flight, leader = self._start(key, producer), True
        else:
            flight, leader = existing, False
            self.deduplicated += 1
            if self._metrics is not None:
                self._metrics.deduplicated.labels(endpoint).inc()
        self._tokens += 1
        flight.subscribe(self._tokens)
        return Subscription(flight, self._tokens, leader)

    def _start(self, key: str, producer: Producer) -> Flight:
        flight = Flight(key, self.max_lag_bytes)
        if len(self._flights) < self.max_flights:
            self._flights[key] = flight
            flight.on_close = self._forget
        else:
            flight.open = False  # over the bound: run alone, invisible to followers
        flight.task = asyncio.create_task(self._run(flight, producer), name=f"flight-{key[:12]}")
        return flight

    def _forget(self, flight: Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    @staticmethod
    async def _run(flight: Flight, producer: Producer) -> None:
        try:
            await producer(FlightWriter(flight))
        except asyncio.CancelledError:
            flight.finish(ConnectionAbortedError("the shared upstream call was cancelled"))
            raise
        except Exception as exc:  # every subscriber re-raises it; nothing is swallowed
            flight.finish(exc)
        else:
            flight.finish()
