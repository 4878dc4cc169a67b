"""The engine's waiting queue under vLLM's two scheduling policies (``--scheduling-policy``).

``fcfs``: arrival order; a preempted sequence goes back to the front (vLLM's
``FCFSRequestQueue.prepend_request``). ``priority``: a heap ordered by ``(priority, arrival)``,
lower value first, as vLLM's ``PriorityRequestQueue`` orders its ``Request``s; a preempted
sequence simply re-enters the heap at its place (there is no "front" in a priority queue).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar

from vgate_worker.settings import SchedulingPolicy


class Queued(Protocol):
    """What the queue reads from a sequence."""

    @property
    def priority(self) -> int: ...

    @property
    def arrival(self) -> float: ...


T = TypeVar("T", bound=Queued)


class WaitingQueue(Generic[T]):
    """Waiting sequences in the order the policy admits them."""

    def __init__(self, policy: SchedulingPolicy) -> None:
        self.policy: SchedulingPolicy = policy
        self._fifo: deque[T] = deque()
        # (priority, arrival, tie-breaker, item): the tie-breaker keeps equal keys in push order.
        self._heap: list[tuple[int, float, int, T]] = []
        self._serial = itertools.count()

    def add(self, item: T) -> None:
        """A new arrival."""
        if self.policy == "fcfs":
            self._fifo.append(item)
        else:
            heapq.heappush(self._heap, (item.priority, item.arrival, next(self._serial), item))

    def prepend(self, item: T) -> None:
        """A preempted sequence coming back: first in line under fcfs, at its rank under priority."""
        if self.policy == "fcfs":
            self._fifo.appendleft(item)
        else:
            self.add(item)

    def peek(self) -> T:
        """The next sequence to admit (IndexError when empty)."""
        return self._fifo[0] if self.policy == "fcfs" else self._heap[0][3]

    def pop(self) -> T:
        """Remove and return the next sequence to admit."""
        return self._fifo.popleft() if self.policy == "fcfs" else heapq.heappop(self._heap)[3]

    def remove(self, item: T) -> None:
        """Take out one sequence (a cancelled request); ValueError when absent."""
        if self.policy == "fcfs":
            self._fifo.remove(item)
            return
        index = next(i for i, entry in enumerate(self._heap) if entry[3] is item)
        self._heap.pop(index)
        heapq.heapify(self._heap)

    def clear(self) -> None:
        """Forget every sequence."""
        self._fifo.clear()
        self._heap.clear()

    def __contains__(self, item: object) -> bool:
        return any(queued is item for queued in self)

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[T]:
        """In admission order."""
        if self.policy == "fcfs":
            return iter(list(self._fifo))
        return iter([entry[3] for entry in sorted(self._heap, key=lambda e: e[:3])])


def preemption_victim(running: list[T], policy: SchedulingPolicy) -> T:
    """The running sequence vLLM V1 preempts when a running one needs a KV block and none is free.

    ``priority``: the worst ``(priority, arrival)``: the least urgent, the latest among equals.
    ``fcfs``: the last admitted (the tail of the running list).
    """
    if policy == "priority":
        return max(running, key=lambda s: (s.priority, s.arrival))
    return running[-1]
