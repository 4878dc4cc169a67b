"""``vgate gateway``: serve the OpenAI-compatible gateway with uvicorn."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgate gateway",
        description="OpenAI-compatible gateway in front of vLLM workers. Every flag also reads VGATE_<NAME>.",
    )
    p.add_argument("--config", help="YAML configuration file (also VGATE_CONFIG)")
    p.add_argument("--host", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default 8000)")
    p.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        metavar="URL",
        help="static worker base URL, repeatable (also VGATE_ENDPOINTS, comma-separated)",
    )
    p.add_argument("--routing", help="load-balancing strategy (default prefix-aware)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("--log-json", action="store_const", const=True, help="log JSON lines")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    from vgate_gateway.settings import load_settings

    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        settings = load_settings(args.config, **overrides)
    except ValidationError as exc:
        print(f"vgate gateway: invalid configuration:\n{_explain(exc)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"vgate gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from vgate_gateway.app import build_app
    from vgate_gateway.logs import setup_logging

    try:
        app = build_app(settings)
    except ValueError as exc:
        print(f"vgate gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s),
    )
    return 0


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(settings)"
        env = f" (VGATE_{where.upper()})" if err["loc"] else ""
        lines.append(f"  {where}{env}: {err['msg']}")
    return "\n".join(lines)
