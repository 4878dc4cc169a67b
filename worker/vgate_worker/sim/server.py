"""Entry point of ``vgate worker --dry-run``."""

from __future__ import annotations

import logging
import socket
import sys
import time
from collections.abc import Sequence

import uvicorn
from pydantic import ValidationError

from vgate_worker.sim.app import build_app
from vgate_worker.sim.settings import settings_from_argv


def main(argv: Sequence[str]) -> int:
    """Parse flags and environment, then serve until SIGTERM/SIGINT."""
    try:
        settings = settings_from_argv(argv)
    except ValidationError as exc:
        # One line per problem, each naming the setting: the tuner reports the last as the reason.
        for err in exc.errors():
            where = ".".join(str(part) for part in err["loc"]) or "settings"
            print(f"vgate worker --dry-run: invalid settings: {where}: {err['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = build_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), access_log=False
    )
    if settings.startup_delay_s <= 0:
        uvicorn.Server(config).run()
        return 0
    # vLLM binds its port first (so nothing else takes it) but listens only once the model is
    # loaded: until then a connection is refused, and so it is here.
    try:
        sock = _bind(settings.host, settings.port)
    except OSError as exc:
        print(f"vgate worker --dry-run: cannot bind {settings.host}:{settings.port}: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("loading (simulated): listening in %.1fs", settings.startup_delay_s)
    time.sleep(settings.startup_delay_s)
    uvicorn.Server(config).run(sockets=[sock])  # asyncio listens on it when serving starts
    return 0


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` that does not listen yet."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock
