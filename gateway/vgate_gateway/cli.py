"""``vgate gateway``: serve the OpenAI-compatible gateway with uvicorn."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import ValidationError

from vgate_gateway.settings import GatewaySettings, LogLevel, deprecations, load_settings


def _default(name: str) -> Any:
    """The setting's default, for help texts that would otherwise repeat it."""
    return GatewaySettings.model_fields[name].default


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vgate gateway",
        description="OpenAI-compatible gateway in front of vLLM workers. Every flag also reads VGATE_<NAME>.",
    )
    p.add_argument("--config", help="YAML configuration file (also VGATE_CONFIG)")
    p.add_argument("--host", help=f"listen address (default {_default('host')})")
    p.add_argument("--port", type=int, help=f"listen port (default {_default('port')})")
    p.add_argument(
        "--internal-port",
        type=int,
        help=f"port of /metrics, /stats, /docs, /openapi.json (default {_default('internal_port')})",
    )
    p.add_argument("--api-keys-file", help="API keys, one a line (default: none, the gateway is open)")
    p.add_argument(
        "--endpoint",
        dest="endpoints",
        action="append",
        metavar="URL",
        help="static worker base URL, repeatable (also VGATE_ENDPOINTS, comma-separated)",
    )
    p.add_argument("--routing", help=f"load-balancing strategy (default {_default('routing')})")
    p.add_argument(
        "--processes", type=int, help=f"serving processes sharing the port (default {_default('processes')})"
    )
    p.add_argument("--workers", type=int, help="deprecated name of --processes")
    p.add_argument("--log-level", choices=get_args(LogLevel))
    p.add_argument("--log-json", action="store_const", const=True, help="log JSON lines")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
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

    from vgate_gateway.app import SETTINGS_ENV, build_app, tune_gc
    from vgate_gateway.front.auth import KeyFileError
    from vgate_gateway.logs import setup_logging
    from vgate_gateway.metrics import MULTIPROCESS_ENV
    from vgate_gateway.ops.app import bind

    try:
        app = build_app(settings)
    except (ValueError, KeyFileError, OSError) as exc:
        print(f"vgate gateway: invalid configuration: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_json)
    for warning in deprecations(settings):
        logging.getLogger("vgate_gateway").warning("%s", warning)
    try:
        # The public port and the internal one (/metrics, /stats, /docs): one server, both sockets.
        sockets = [
            bind(settings.host, settings.port),
            bind(settings.internal_host or settings.host, settings.internal_port),
        ]
    except OSError as exc:
        print(f"vgate gateway: cannot listen: {exc}", file=sys.stderr)
        return 2
    common: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": int(settings.shutdown_grace_s),
        # The fast event loop and HTTP parser; uvicorn[standard] installs both.
        "loop": "uvloop",
        "http": "httptools",
        # Below the idle timeout of load balancers in front (60 s for most cloud ones).
        "timeout_keep_alive": 75,
        # The guard reads the real peer; forwarding headers are its business (trusted_proxies).
        "proxy_headers": False,
        "server_header": False,
    }
    if settings.processes == 1:
        config = uvicorn.Config(app, **common)
        tune_gc()
        uvicorn.Server(config).run(sockets=sockets)
        return 0
    # N processes share both listening sockets; each builds its app from the same settings,
    # and writes its metrics where a scrape of any of them finds all (prometheus_client's
    # multiprocess mode).
    from uvicorn.supervisors import Multiprocess

    os.environ[SETTINGS_ENV] = settings.model_dump_json()
    with tempfile.TemporaryDirectory(prefix="vgate-metrics-") as metrics_dir:
        os.environ.setdefault(MULTIPROCESS_ENV, metrics_dir)
        config = uvicorn.Config(
            "vgate_gateway.app:app_from_env", factory=True, workers=settings.processes, **common
        )
        Multiprocess(config, sockets=sockets).run()
    return 0


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(settings)"
        env = f" (VGATE_{where.upper()})" if err["loc"] else ""
        lines.append(f"  {where}{env}: {err['msg']}")
    return "\n".join(lines)
