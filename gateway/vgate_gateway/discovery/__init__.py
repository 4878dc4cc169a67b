"""Where the gateway learns its worker endpoints.

A source is a long-running coroutine that publishes *complete* snapshots::

    class DiscoverySource(Protocol):
        async def run(self, publish: Publish) -> None: ...

``publish(endpoints)`` replaces the pool's view with exactly those endpoints. The
lifespan runs the source as a task and cancels it at shutdown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from vgate_gateway.upstream.pool import DiscoveredEndpoint

Publish = Callable[[Sequence[DiscoveredEndpoint]], None]


class DiscoverySource(Protocol):
    async def run(self, publish: Publish) -> None: ...
