"""Static discovery: a fixed list of worker URLs from configuration (``vgate dev``)."""

from __future__ import annotations

from collections.abc import Sequence

from vgate_gateway.discovery import Publish
from vgate_gateway.upstream.pool import DiscoveredEndpoint


class StaticDiscovery:
    def __init__(self, urls: Sequence[str]) -> None:
        self._endpoints = [DiscoveredEndpoint(url=u.rstrip("/")) for u in urls]

    async def run(self, publish: Publish) -> None:
        # Models are learned by the health checker from each worker's /v1/models.
        publish(self._endpoints)
