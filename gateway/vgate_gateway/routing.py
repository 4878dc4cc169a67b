"""Load-balancing strategies: pure choices among healthy candidates.

A strategy sees the candidate upstreams for one request (non-empty, stable order,
all routable and serving the model) and a :class:`RouteRequest`, and returns one of
them. Strategies do no I/O; any state they keep (a counter, a bounded table) lives
on the instance, so they are unit-tested as plain objects.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from vgate_gateway.upstreams import Upstream


@dataclass(frozen=True)
class RouteRequest:
    """What a strategy may know about a request."""

    model: str
    #: Client affinity key (a session header, or the OpenAI ``user`` field).
    session_key: str | None = None
    #: Prompt text in order (chat messages flattened), for prefix-aware routing.
    prompt: str | None = None


class Strategy(Protocol):
    name: str

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream: ...


class RoundRobin:
    """Each model cycles through its candidates in turn."""

    name = "round-robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        i = self._next.get(request.model, 0)
        self._next[request.model] = i + 1
        return candidates[i % len(candidates)]


class PowerOfTwoChoices:
    """Least outstanding requests, sampled: pick two at random, take the less loaded.

    Sampling two (rather than scanning all) avoids herding on the one endpoint that
    looked idle a moment ago when many gateway replicas decide at once.
    """

    name = "least-request"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[Upstream], request: RouteRequest) -> Upstream:
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._rng.sample(list(candidates), 2)
        return a if a.inflight <= b.inflight else b


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    RoundRobin.name: RoundRobin,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
}


def build_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ValueError(f"unknown routing strategy {name!r}; choose one of {sorted(STRATEGIES)}") from None
