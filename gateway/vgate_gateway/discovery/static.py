"""Static discovery: worker URLs from configuration, or from a file re-read when it changes.

``endpoints`` is a fixed list. ``endpoints_file`` holds one URL a line (``#`` comments and
blank lines ignored) and is checked every ``reload_s``: each change publishes a complete
new snapshot, so a process that starts and stops workers (``vgate dev --autoscale``) needs
nothing but the file. A file that cannot be read keeps the last snapshot, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from vgate_gateway.discovery import Publish
from vgate_gateway.upstream.pool import DiscoveredEndpoint

log = logging.getLogger(__name__)


class StaticDiscovery:
    def __init__(self, urls: Sequence[str]) -> None:
        self._endpoints = [DiscoveredEndpoint(url=u.rstrip("/")) for u in urls]

    async def run(self, publish: Publish) -> None:
        # Models are learned by the health checker from each worker's /v1/models.
        publish(self._endpoints)


def read_endpoints(text: str) -> list[str]:
    """The URLs of an endpoints file; ValueError names a line that is not an http(s) URL."""
    urls = []
    for number, line in enumerate(text.splitlines(), 1):
        url = line.split("#", 1)[0].strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"line {number}: {url!r} is not an http:// or https:// URL")
        urls.append(url.rstrip("/"))
    return urls


class FileDiscovery:
    """The endpoints listed in ``path``, published again whenever the file changes."""

    def __init__(self, path: Path, reload_s: float = 0.5) -> None:
        self._path = path
        self._reload_s = reload_s

    async def run(self, publish: Publish) -> None:
        seen: tuple[int, int] | None = None
        problem = ""
        while True:
            try:
                stat = self._path.stat()
                if (stat.st_mtime_ns, stat.st_size) != seen:
                    seen = (stat.st_mtime_ns, stat.st_size)
                    urls = read_endpoints(self._path.read_text())
                    publish([DiscoveredEndpoint(url=u) for u in urls])
                    log.info("endpoints file %s: %d workers", self._path, len(urls))
                problem = ""
            except (OSError, ValueError) as exc:
                if str(exc) != problem:  # said once, not every round
                    problem = str(exc)
                    log.warning("endpoints file %s: %s; keeping the last list", self._path, exc)
            await asyncio.sleep(self._reload_s)
