"""A model's queue as data, and the order it is served in.

A :class:`Waiting` request holds its place until a worker can take it; the
:class:`ModelQueue` keeps the waiting requests in lanes — one per priority class and key,
each in arrival order — and bounds how many wait and how many body bytes they hold. Which
waiting request goes next is a policy over that state, with no I/O:

- :class:`FairShare` (the default): the most urgent class first; within a class the key
  that has been served the fewest weighted tokens (a Virtual Token Counter, after Sheng et
  al., "Fairness in Serving Large Language Models", OSDI '24); within a key, arrival order.
- :class:`Fifo`: arrival order, nothing else (for comparison).

The dispatcher (:mod:`vgate_gateway.upstream.dispatch`) does the waiting, waking and
charging around it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from vgate_gateway.protocol import Priority, Request, Usage
from vgate_gateway.upstream.pool import Upstream

#: Body bytes per prompt token, for the charge made when a request is dispatched (corrected
#: from the answer's usage when it ends): about four characters a token in English text.
BYTES_PER_TOKEN = 4
#: How much more an output token costs than a prompt token in the counters (the paper's w_q / w_p).
OUTPUT_TOKEN_WEIGHT = 2.0
#: Keys a fair-share policy remembers; beyond it, the counters of keys not waiting are forgotten.
MAX_COUNTERS = 4096
CLASSES = tuple(Priority)
K = TypeVar("K")


@dataclass(eq=False)
class Waiting:
    """One request waiting for a worker; ``granted`` gets the worker it is dispatched to."""

    req: Request
    since: float
    granted: asyncio.Future[Upstream] = field(repr=False)
    #: Arrival order in its queue (set when queued).
    seq: int = 0

    @property
    def size(self) -> int:
        return len(self.req.body)

    @property
    def key(self) -> str:
        return self.req.key_id

    @property
    def priority(self) -> Priority:
        return self.req.schedule.priority


@dataclass(frozen=True)
class Bounds:
    """How much one model's queue may hold, and for how long."""

    max_requests: int
    max_bytes: int
    timeout_s: float


class QueueFull(Exception):
    """The queue is at one of its bounds; the message says which."""


Lane = deque[Waiting]


class ModelQueue:
    """The requests waiting for one model's workers: a lane per class and key, each FIFO."""

    def __init__(self, model: str, bounds: Bounds) -> None:
        self.model = model
        self.bounds = bounds
        #: Per class (index: :class:`Priority`), the lanes of the keys that have requests waiting.
        self.lanes: tuple[dict[str, Lane], ...] = tuple({} for _ in CLASSES)
        self.depth = [0 for _ in CLASSES]
        self._count = 0  # sum(depth), read on the fast path of every request of a model that queued
        self.bytes = 0
        self._seq = 0
        #: Requests that waited and were dispatched, refused at a bound, timed out, shed.
        self.dispatched = 0
        self.rejected = 0
        self.timed_out = 0
        self.shed = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiting]:
        for lanes in self.lanes:
            for lane in lanes.values():
                yield from lane

    def lane(self, priority: Priority, key: str) -> Lane:
        return self.lanes[priority].get(key) or deque()

    def victims(self, waiting: Waiting, shed: bool = True) -> list[Waiting]:
        """What must leave for ``waiting`` to fit: nothing, or requests that matter less than it.

        First the newest requests of the classes below its own, the least urgent first; then,
        within its class, the newest request of the key holding the most places for its
        weight, as long as that key would still hold more than the newcomer's key (fair
        queuing's drop from the longest queue: a flood cannot fill the queue against a key
        that sends little). Raises :class:`QueueFull` (counted) when that cannot make room, or
        at once when it is full and ``shed`` is false (plain FIFO).
        """
        bounds = self.bounds
        count, size = len(self) + 1, self.bytes + waiting.size
        out: list[Waiting] = []
        candidates = (
            itertools.chain(self._newest_first_below(waiting.priority), self._longest_lanes(waiting))
            if shed
            else iter(())
        )
        while count > bounds.max_requests or size > bounds.max_bytes:
            victim = next(candidates, None)
            if victim is None:
                self.rejected += 1
                if len(self) >= bounds.max_requests:
                    raise QueueFull(f"{len(self)} requests are already waiting for model '{self.model}'")
                raise QueueFull(f"the requests waiting for model '{self.model}' hold {self.bytes} bytes")
            out.append(victim)
            count, size = count - 1, size - victim.size
        return out

    def _newest_first_below(self, priority: Priority) -> Iterator[Waiting]:
        """Requests of the classes less urgent than ``priority``: the least urgent class first."""
        for p in reversed(CLASSES[priority + 1 :]):
            yield from _from_longest(self.lanes[p])

    def _longest_lanes(self, waiting: Waiting) -> Iterator[Waiting]:
        """Requests of ``waiting``'s class from keys that would still hold more places than its key."""
        lanes = self.lanes[waiting.priority]
        held = len(lanes.get(waiting.key, ())) + 1
        yield from _from_longest(lanes, skip=waiting.key, floor=held / waiting.req.schedule.weight)

    def add(self, waiting: Waiting) -> None:
        """Queue ``waiting`` at the back of its lane (bounds are :meth:`victims`' business)."""
        self._seq += 1
        waiting.seq = self._seq
        lanes = self.lanes[waiting.priority]
        lane = lanes.get(waiting.key)
        if lane is None:
            lane = lanes[waiting.key] = deque()
        lane.append(waiting)
        self.depth[waiting.priority] += 1
        self._count += 1
        self.bytes += waiting.size

    def remove(self, waiting: Waiting) -> bool:
        """Take ``waiting`` out (dispatched, gave up, or shed); False if it is not here."""
        lanes = self.lanes[waiting.priority]
        lane = lanes.get(waiting.key)
        if lane is None:
            return False
        if lane and lane[0] is waiting:
            lane.popleft()
        else:
            try:
                lane.remove(waiting)
            except ValueError:
                return False
        if not lane:
            del lanes[waiting.key]
        self.depth[waiting.priority] -= 1
        self._count -= 1
        self.bytes -= waiting.size
        return True

    def backlogged(self, key: str) -> bool:
        """Whether ``key`` has a request waiting here, in any class."""
        return any(key in lanes for lanes in self.lanes)

    def waiting_of(self, key: str) -> int:
        """Requests of ``key`` waiting here, in every class."""
        return sum(len(lanes[key]) for lanes in self.lanes if key in lanes)

    def oldest_wait_s(self, now: float) -> float:
        heads = [lane[0].since for lanes in self.lanes for lane in lanes.values()]
        return now - min(heads) if heads else 0.0


#: Seconds a key counts as active after its last dispatch, for the reserve: a light tenant
#: that sends a request every few seconds keeps slots held for it between them.
ACTIVE_S = 10.0


class Shares:
    """Who holds one model's slots, for what is kept from keys over their share.

    Per key: requests in flight and the last dispatch. A key is **over its share** when more
    than one key is active (a request in flight, or one dispatched in the last
    :data:`ACTIVE_S`) and it holds more than its weighted share of the model's slots. Such a
    key may fill a worker only up to ``capacity - reserve`` (the last slots are kept for keys
    within their share, so a light tenant's request finds one free at once under a flood
    instead of waiting for one of the flood's requests to end), and, with ``prefills`` set,
    may have at most that many streamed requests awaiting their first token on one worker (so
    a step carries few of its prefills), and with ``free_workers`` is kept from that many
    workers (:meth:`kept_free`). With one key active nothing is held back, and keys
    that all hold their share fill every slot. Times are given (the dispatcher's clock):
    plain arithmetic.
    """

    def __init__(self, reserve: int, prefills: int = 0, free_workers: int = 0) -> None:
        self.reserve = reserve
        self.prefills = prefills
        self.free_workers = free_workers
        self.inflight: dict[str, int] = {}
        #: Per key: (last dispatch, its weight).
        self.seen: dict[str, tuple[float, float]] = {}

    def begin(self, key: str, weight: float, now: float) -> None:
        self.inflight[key] = self.inflight.get(key, 0) + 1
        if key not in self.seen and len(self.seen) >= MAX_COUNTERS:
            self._forget(now)
        self.seen[key] = (now, weight)

    def end(self, key: str) -> None:
        count_down(self.inflight, key)

    def alone(self, key: str) -> bool:
        """Whether ``key`` is the only key seen: never over its share (the common case)."""
        seen = self.seen
        return len(seen) < 2 and (not seen or key in seen)

    def over_share(self, key: str, weight: float, slots: Callable[[], int], now: float) -> bool:
        """Whether ``key`` holds more than its share of the model's ``slots`` (all workers')."""
        if self.alone(key):
            return False  # decided without ``slots``
        others, stale = 0.0, []
        for k, (at, w) in self.seen.items():
            if not self._active(k, at, now):
                stale.append(k)
            elif k != key:
                others += w
        for k in stale:  # only the active keys stay: the next look is as short as they are few
            del self.seen[k]
        return bool(others) and self.inflight.get(key, 0) > slots() * weight / (weight + others)

    def limit(self, capacity: int) -> int:
        """Requests one worker may hold when a request of a key over its share goes to it."""
        return max(1, capacity - self.reserve)

    def kept_free(self, workers: Sequence[str]) -> list[str]:
        """Of a model's ``workers`` (URLs), those a flooding key is kept from: ``free_workers`` of them.

        The last in URL order, so every gateway process and replica keeps the same ones free
        without telling each other; one worker is always left to the flood.
        """
        if not self.free_workers or len(workers) < 2:
            return []
        return sorted(workers)[max(1, len(workers) - self.free_workers) :]

    def _active(self, key: str, last: float, now: float) -> bool:
        return key in self.inflight or now - last <= ACTIVE_S

    def _forget(self, now: float) -> None:
        self.seen = {k: v for k, v in self.seen.items() if self._active(k, v[0], now)}


def count_down(counts: dict[K, int], key: K) -> None:
    """One fewer of ``key`` in ``counts``; a count that reaches 0 leaves (the dict stays small)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _from_longest(
    lanes: dict[str, Lane], skip: str | None = None, floor: float | None = None
) -> Iterator[Waiting]:
    """Requests of one class, each time the newest of the key holding the most places for its weight.

    ``skip``: a key never taken from; ``floor``: stop before a key would be left holding
    fewer places per unit of weight than that.
    """
    held = {key: len(lane) for key, lane in lanes.items() if key != skip}

    def weight(key: str) -> float:
        return lanes[key][0].req.schedule.weight

    while held:
        key = max(held, key=lambda k: (held[k] / weight(k), lanes[k][held[k] - 1].seq))
        if floor is not None and (held[key] - 1) / weight(key) < floor:
            return
        held[key] -= 1
        yield lanes[key][held[key]]
        if not held[key]:
            del held[key]


#: Engine priorities (vLLM's request ``priority``, lower served first): classes two apart, and a
#: key over its share one worse than a key within it, so the standing never crosses a class.
ENGINE_PRIORITY_STEP = 2


def engine_priority(priority: Priority, over_share: bool) -> int:
    """The ``priority`` a request carries to a worker running vLLM's priority scheduling.

    high 0/1, normal 2/3, low 4/5: the class first, then whether its key is over its share.
    """
    return ENGINE_PRIORITY_STEP * int(priority) + int(over_share)


#: What every request carries under ``fifo``, which ignores classes and keys.
FIFO_ENGINE_PRIORITY = engine_priority(Priority.NORMAL, False)


class Policy(Protocol):
    """The order a model's queue is served in, and what it remembers to keep that order."""

    name: str
    #: Whether a full queue sheds a request that matters less for an arrival (or refuses it).
    sheds: bool

    def arrived(self, queue: ModelQueue, waiting: Waiting) -> None:
        """``waiting`` is about to join ``queue``."""

    def pick(self, queue: ModelQueue) -> Waiting | None:
        """The request a free worker takes next (not removed), or None when the queue is empty."""

    def dispatched(self, waiting: Waiting) -> None:
        """``waiting`` left the queue for a worker."""

    def settle(self, req: Request, usage: Usage) -> float:
        """``req``'s answer ended with ``usage``; returns the weighted tokens it cost."""

    def ahead(self, queue: ModelQueue, waiting: Waiting) -> int:
        """How many waiting requests go before ``waiting`` (not yet queued) if nothing else arrives."""

    def counters(self) -> dict[str, float]:
        """Per key, the weighted tokens the policy counts as served."""

    def engine_priority(self, queue: ModelQueue, waiting: Waiting) -> int:
        """The engine priority of ``waiting``, just dispatched from ``queue`` (already removed)."""


class Fifo:
    """First come, first served: classes, keys and weights are ignored, and a full queue refuses."""

    name = "fifo"
    sheds = False

    def arrived(self, queue: ModelQueue, waiting: Waiting) -> None:
        return None

    def pick(self, queue: ModelQueue) -> Waiting | None:
        heads = [lane[0] for lanes in queue.lanes for lane in lanes.values()]
        return min(heads, key=lambda w: w.seq) if heads else None

    def dispatched(self, waiting: Waiting) -> None:
        return None

    def settle(self, req: Request, usage: Usage) -> float:
        return cost_of(req, usage)

    def ahead(self, queue: ModelQueue, waiting: Waiting) -> int:
        return len(queue)

    def counters(self) -> dict[str, float]:
        return {}

    def engine_priority(self, queue: ModelQueue, waiting: Waiting) -> int:
        return FIFO_ENGINE_PRIORITY


def estimate_tokens(req: Request) -> int:
    """The prompt tokens charged when ``req`` is dispatched: its body's bytes / :data:`BYTES_PER_TOKEN`."""
    return max(1, len(req.body) // BYTES_PER_TOKEN)


def cost_of(req: Request, usage: Usage) -> float:
    """Weighted tokens an answer cost: prompt + :data:`OUTPUT_TOKEN_WEIGHT` x output, over the key's weight.

    The prompt is the worker's count, else the estimate; output is the worker's count, else
    one token per streamed event seen.
    """
    prompt = usage.prompt_tokens if usage.prompt_tokens is not None else estimate_tokens(req)
    output = usage.completion_tokens if usage.completion_tokens is not None else usage.events
    return (prompt + OUTPUT_TOKEN_WEIGHT * output) / req.schedule.weight


class FairShare:
    """Priority classes, then weighted fair share by tokens served (VTC), then arrival order.

    Each key has a counter of the weighted tokens it was served. A request is charged its
    estimated prompt when dispatched and corrected with the answer's real usage when it ends.
    The next request comes from the most urgent class that has one, from the key of that
    class with the lowest counter (ties: the earliest request). A key that starts waiting
    has its counter lifted to the lowest counter of the keys already waiting in its class
    (or, with none, to that of the last key served), so credit is not banked while idle.
    """

    name = "fair"
    sheds = True

    def __init__(self) -> None:
        self._counters: dict[str, float] = {}
        #: The counter of the key served last (VTC's lift when nobody else is waiting).
        self._last = 0.0

    def arrived(self, queue: ModelQueue, waiting: Waiting) -> None:
        key, lanes = waiting.key, queue.lanes[waiting.priority]
        if key in lanes:
            return  # already waiting: keeps its counter
        if key not in self._counters and len(self._counters) >= MAX_COUNTERS:
            backlogged = {k for ls in queue.lanes for k in ls}
            self._counters = {k: v for k, v in self._counters.items() if k in backlogged}
        floor = min((self._counters.get(k, 0.0) for k in lanes), default=self._last)
        self._counters[key] = max(self._counters.get(key, 0.0), floor)

    def pick(self, queue: ModelQueue) -> Waiting | None:
        for lanes in queue.lanes:
            if lanes:
                counters = self._counters
                key = min(lanes, key=lambda k: (counters.get(k, 0.0), lanes[k][0].seq))
                return lanes[key][0]
        return None

    def dispatched(self, waiting: Waiting) -> None:
        req = waiting.req
        req.fair_charge = estimate_tokens(req) / req.schedule.weight
        self._last = self._counters[waiting.key] = self._counters.get(waiting.key, 0.0) + req.fair_charge

    def settle(self, req: Request, usage: Usage) -> float:
        cost = cost_of(req, usage)
        counter = self._counters.get(req.key_id)
        if counter is not None or len(self._counters) < MAX_COUNTERS:
            self._counters[req.key_id] = (counter or 0.0) + cost - req.fair_charge
        return cost

    def ahead(self, queue: ModelQueue, waiting: Waiting) -> int:
        """Every request of a more urgent class, then the turns the other keys of its class get.

        The keys of a class take turns in proportion to their weights: a request that is the
        n-th of its key goes after about n * w_k / w_own requests of each other key k.
        """
        more_urgent = sum(queue.depth[: waiting.priority])
        lanes = queue.lanes[waiting.priority]
        own = lanes.get(waiting.key)
        turn = (len(own) if own else 0) + 1
        weight = waiting.req.schedule.weight
        others = 0
        for key, lane in lanes.items():
            if key != waiting.key:
                share = lane[0].req.schedule.weight / weight
                others += min(len(lane), math.ceil(turn * share))
        return more_urgent + turn - 1 + others

    def counters(self) -> dict[str, float]:
        return dict(self._counters)

    def engine_priority(self, queue: ModelQueue, waiting: Waiting) -> int:
        """Its class, and one worse while its key still has requests waiting after it.

        A key with a backlog is sending more than the fleet serves it: over its share. The
        fair order has already given it its turn here; in the worker's own queue its requests
        then come after those of keys that are within their share, of the same class.
        """
        return engine_priority(waiting.priority, waiting.key in queue.lanes[waiting.priority])


POLICIES: dict[str, type[Fifo] | type[FairShare]] = {"fair": FairShare, "fifo": Fifo}


class RateMeter:
    """How fast a model's queue is being served: dispatches per second over the recent past.

    Times are given (the dispatcher's clock), so the meter is plain arithmetic.
    """

    def __init__(self, window: int = 64, horizon_s: float = 30.0, minimum: int = 4) -> None:
        self._times: deque[float] = deque(maxlen=window)
        self._horizon = horizon_s
        self._minimum = minimum

    def tick(self, now: float) -> None:
        self._times.append(now)

    def rate(self, now: float) -> float | None:
        """Dispatches per second since the oldest remembered one; None while too few to tell."""
        times = self._times
        while times and now - times[0] > self._horizon:
            times.popleft()
        if len(times) < self._minimum or now <= times[0]:
            return None
        return len(times) / (now - times[0])


def wait_estimate(policy: Policy, queue: ModelQueue, waiting: Waiting, rate: float | None) -> float | None:
    """Seconds ``waiting`` would wait for a worker at the queue's recent pace; None if unknown."""
    if not rate:
        return None
    return (policy.ahead(queue, waiting) + 1) / rate
