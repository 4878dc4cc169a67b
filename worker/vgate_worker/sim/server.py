"""Entry point of ``vgate worker --dry-run``."""

from __future__ import annotations

import logging
import sys
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
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), access_log=False
    )
    return 0
