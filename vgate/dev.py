"""``vgate dev``: the whole system on loopback — the gateway and N dry-run workers.

Every component is a child process started with the same ``vgate`` entry point a
container uses. Ctrl-C or SIGTERM stops them all, so nothing is left behind. A worker
that dies is reported and the gateway keeps serving on the others (as it would in a
cluster); only the gateway's own exit ends the stack.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from vgate.devscale import TICK_S, Fleet, Scaler, dev_settings, endpoints_file, parse_bounds
from vgate.monitoring import INSTALL_HINT, Targets, prometheus_binary, start_prometheus, wait_ready
from vgate.procs import Child, ProcessExited, start, stop_all, vgate_argv, wait_http
from vgate_gateway.settings import GatewaySettings
from vgate_worker.settings import DEFAULT_MODEL


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vgate dev", description=__doc__.splitlines()[0])
    port = GatewaySettings.model_fields["port"].default
    p.add_argument("--port", type=int, default=port, help=f"gateway port (default {port})")
    p.add_argument("--workers", type=int, default=2, help="number of dry-run workers (default 2)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"served model name (default {DEFAULT_MODEL})")
    p.add_argument(
        "--worker-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every dry-run worker, repeatable (e.g. --worker-arg=--speed=10)",
    )
    p.add_argument("--routing", help="gateway load-balancing strategy")
    p.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help="require this API key (repeatable); without it the loopback gateway is open",
    )
    p.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="NAME[=SOURCE]",
        help="declare a LoRA adapter of the model, repeatable; the workers load it on demand "
        "(SOURCE: a Hugging Face id or a path, default org/NAME)",
    )
    p.add_argument("--max-loras", type=int, default=4, help="adapter slots per worker (default 4)")
    p.add_argument(
        "--internal-port",
        type=int,
        help="gateway's /metrics, /stats, /status, /docs port (default: after the workers)",
    )
    p.add_argument(
        "--monitoring",
        action="store_true",
        help="also run Prometheus, scraping the gateway and the workers as the chart's monitors do",
    )
    p.add_argument(
        "--prometheus-port",
        type=int,
        default=9090,
        help="Prometheus' port with --monitoring (default 9090)",
    )
    scale = p.add_argument_group("autoscaling (the operator's policy, on local processes)")
    scale.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="start and stop dry-run workers on the gateway's load, between MIN and MAX (0 scales to zero)",
    )
    scale.add_argument(
        "--autoscale-target",
        type=int,
        default=8,
        metavar="N",
        help="requests (in flight + queued) per worker, also each worker's --max-num-seqs (default 8)",
    )
    scale.add_argument(
        "--scale-down-delay",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds before scaling down (default 30)",
    )
    scale.add_argument(
        "--scale-to-zero-delay",
        type=float,
        default=60.0,
        metavar="S",
        help="idle seconds before zero (default 60)",
    )
    scale.add_argument(
        "--cold-start", type=float, default=3.0, metavar="S", help="a new worker's start-up delay (default 3)"
    )
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    if args.autoscale:
        return _autoscaled(args)
    if args.workers < 1:
        print("vgate dev: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 1 <= args.prometheus_port <= 65535:
        print("vgate dev: --prometheus-port must be a TCP port (1-65535)", file=sys.stderr)
        return 2
    if args.monitoring and prometheus_binary() is None:
        print(f"vgate dev: --monitoring: {INSTALL_HINT}", file=sys.stderr)
        return 2
    try:
        adapters = _adapters(args.adapter, args.model)
    except ValueError as exc:
        print(f"vgate dev: {exc}", file=sys.stderr)
        return 2
    worker_ports = [args.port + 1 + i for i in range(args.workers)]
    internal_port = args.internal_port or args.port + 1 + args.workers
    # The components stay in this command's process group: Ctrl-C in the terminal reaches them all.
    children: list[Child] = []
    stopping = _stop_on_signals()
    try:
        lora = ["--enable-lora", "--max-loras", str(args.max_loras)] if adapters else []
        worker_env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if adapters else None
        for port in worker_ports:
            cmd = vgate_argv("worker", "--dry-run", "--port", str(port), "--served-model-name", args.model)
            children.append(start([*cmd, *lora, *args.worker_arg], env=worker_env, group=False))
        # The gateway starts once the workers answer, so its first health round finds them up
        # and its /ready means a client's first request is served.
        # A worker that dies or stalls is reported by the loop below; the others still serve.
        for port in worker_ports:
            with contextlib.suppress(ProcessExited, TimeoutError):
                wait_http(
                    f"http://127.0.0.1:{port}/health",
                    60.0,
                    alive=lambda: not stopping.is_set() and all(c.alive() for c in children),
                )
        endpoints = ",".join(f"http://127.0.0.1:{p}" for p in worker_ports)
        env = {**os.environ, "VGATE_ENDPOINTS": endpoints}
        if args.api_key:
            env["VGATE_API_KEYS_FILE"] = _keys_file(args.api_key)
        if adapters:
            env["VGATE_ADAPTERS"] = json.dumps(adapters)
            env["VGATE_MAX_LORAS"] = str(args.max_loras)
        gateway_cmd = vgate_argv("gateway", "--port", str(args.port), "--internal-port", str(internal_port))
        if args.routing:
            gateway_cmd += ["--routing", args.routing]
        children.append(start(gateway_cmd, env=env, group=False))
        try:
            # /v1/models needs a key when keys are on; /ready is open and says the same.
            wait_http(
                f"http://127.0.0.1:{args.port}/{'ready' if args.api_key else 'v1/models'}",
                60.0,
                alive=lambda: not stopping.is_set() and all(c.alive() for c in children),
            )
            prometheus_url = None
            if args.monitoring:
                prometheus_url = _start_prometheus(
                    args.prometheus_port, internal_port, worker_ports, children
                )
            _banner(args.port, internal_port, args.model, worker_ports, bool(args.api_key), prometheus_url)
        except (ProcessExited, TimeoutError):
            pass  # the loop below reports a dead component; a slow one may still come up
        gateway, workers = children[args.workers], children[: args.workers]
        reported: set[int] = set()
        while not stopping.is_set() and gateway.alive():
            for port, worker in zip(worker_ports, workers, strict=True):
                if not worker.alive() and port not in reported:
                    reported.add(port)
                    alive = len(workers) - len(reported)
                    print(
                        f"vgate dev: worker 127.0.0.1:{port} exited (status {worker.popen.returncode}); "
                        f"the gateway keeps serving on {alive} worker{'s' * (alive != 1)}",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.2)
        if not stopping.is_set():
            print(
                f"vgate dev: the gateway exited (status {gateway.popen.returncode}); stopping",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        stop_all(children)


def _adapters(flags: Sequence[str], model: str) -> dict[str, dict[str, str]]:
    """``--adapter NAME[=SOURCE]`` flags as the gateway's ``adapters`` setting."""
    out: dict[str, dict[str, str]] = {}
    for flag in flags:
        name, _, source = flag.partition("=")
        if not name or name == model or name in out:
            raise ValueError(f"--adapter {flag!r}: the name must be new and differ from the model's")
        out[name] = {"base": model, "source": source or f"org/{name}"}
    return out


def _autoscaled(args: argparse.Namespace) -> int:
    """The stack with ``--autoscale``: the policy loop instead of a fixed set of workers."""
    try:
        bounds = parse_bounds(args.autoscale)
        if (
            args.autoscale_target < 1
            or args.scale_down_delay < 0
            or args.scale_to_zero_delay < 0
            or args.cold_start < 0
        ):
            raise ValueError("--autoscale-target must be >= 1 and the delays and --cold-start >= 0")
    except ValueError as exc:
        print(f"vgate dev: {exc}", file=sys.stderr)
        return 2
    internal_port = args.internal_port or args.port + 1
    worker_args = ["--startup-delay-s", f"{args.cold_start:g}", "--max-num-seqs", str(args.autoscale_target)]
    fleet = Fleet(args.model, endpoints_file(), [*worker_args, *args.worker_arg], say=_say)
    settings = dev_settings(bounds, args.autoscale_target, args.scale_down_delay, args.scale_to_zero_delay)
    stopping = _stop_on_signals()
    env = {
        **os.environ,
        "VGATE_ENDPOINTS_FILE": str(fleet.endpoints),
        "VGATE_MODELS": args.model,
        # A worker is saturated at its batch: beyond it the gateway queues, and the queue is the signal.
        "VGATE_WORKER_CAPACITY": str(args.autoscale_target),
    }
    if args.api_key:
        env["VGATE_API_KEYS_FILE"] = _keys_file(args.api_key)
    gateway_cmd = vgate_argv("gateway", "--port", str(args.port), "--internal-port", str(internal_port))
    if args.routing:
        gateway_cmd += ["--routing", args.routing]
    gateway = start(gateway_cmd, env=env, group=False)
    try:
        fleet.grow(bounds[0])
        with contextlib.suppress(ProcessExited, TimeoutError):
            wait_http(
                f"http://127.0.0.1:{args.port}/ready",
                60.0,
                alive=lambda: not stopping.is_set() and gateway.alive(),
            )
            _autoscale_banner(args, internal_port, bounds)
        scaler = Scaler(fleet, settings, f"http://127.0.0.1:{internal_port}")
        while not stopping.is_set() and gateway.alive():
            scaler.tick()
            time.sleep(TICK_S)
        if not stopping.is_set():
            print(
                f"vgate dev: the gateway exited (status {gateway.popen.returncode}); stopping",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        stop_all([*fleet.children(), gateway])


def _say(text: str) -> None:
    print(f"vgate dev: {text}", flush=True)


def _autoscale_banner(args: argparse.Namespace, internal_port: int, bounds: tuple[int, int]) -> None:
    url = f"http://127.0.0.1:{args.port}"
    print(
        f"""
V-Gate is up: gateway {url}/v1 -> {bounds[0]}..{bounds[1]} autoscaled dry-run workers of {args.model}
  each takes {args.autoscale_target} requests at once and starts in {args.cold_start:g}s; the gateway queues the rest
  scale-down after {args.scale_down_delay:g}s, to zero after {args.scale_to_zero_delay:g}s idle (see docs/autoscaling.md)

  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{args.model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

Load: http://127.0.0.1:{internal_port}/load   Stop: Ctrl-C
""",
        flush=True,
    )


def _start_prometheus(
    port: int, internal_port: int, worker_ports: Sequence[int], children: list[Child]
) -> str | None:
    """Prometheus as one more child, its data in a temporary folder removed at exit; its URL once up.

    A Prometheus that cannot start (its port taken) is reported; the stack serves on without it.
    """
    workdir = Path(tempfile.mkdtemp(prefix="vgate-dev-prometheus-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    targets = Targets(f"127.0.0.1:{internal_port}", [f"127.0.0.1:{p}" for p in worker_ports])
    log = workdir / "prometheus.log"
    child = start_prometheus(targets, port, workdir, log=log, group=False)
    children.append(child)
    try:
        wait_ready(child, port)
    except (ProcessExited, TimeoutError) as exc:
        print(f"vgate dev: Prometheus did not start, serving without it: {exc}", file=sys.stderr, flush=True)
        return None
    return f"http://127.0.0.1:{port}"


def _stop_on_signals() -> threading.Event:
    """Set on SIGTERM or SIGINT (Ctrl-C): the supervisor loop then stops every child."""
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return stopping


def _keys_file(keys: Sequence[str]) -> str:
    """The keys in a private file the gateway reads (removed when the process exits)."""
    fd, path = tempfile.mkstemp(prefix="vgate-dev-keys-", text=True)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k}\n" for k in keys))
    atexit.register(Path(path).unlink, missing_ok=True)
    return path


def _banner(
    port: int,
    internal_port: int,
    model: str,
    worker_ports: Sequence[int],
    key: bool,
    prometheus_url: str | None = None,
) -> None:
    url = f"http://127.0.0.1:{port}"
    internal = f"http://127.0.0.1:{internal_port}"
    workers = ", ".join(f"127.0.0.1:{p}" for p in worker_ports)
    auth = (
        "API keys: required (--api-key)"
        if key
        else "API keys: none, the gateway is open (vgate dev --api-key KEY)"
    )
    header = " -H 'Authorization: Bearer <your key>'" if key else ""
    monitoring = (
        f"\nPrometheus: {prometheus_url} (scrapes {internal}/metrics and the workers' /metrics)"
        if prometheus_url
        else ""
    )
    print(
        f"""
V-Gate is up: gateway {url}/v1 -> {len(worker_ports)} dry-run workers ({workers})
{auth}

  curl {url}/v1/chat/completions -H 'Content-Type: application/json'{header} \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'

  python -c "from openai import OpenAI; c = OpenAI(base_url='{url}/v1', api_key='{"<your key>" if key else "none"}'); \\
print(c.chat.completions.create(model='{model}', messages=[{{'role': 'user', 'content': 'Hello!'}}]).choices[0].message.content)"

Status page: {internal}/status
Internal: {internal}/metrics  {internal}/stats  {internal}/docs   Stop: Ctrl-C{monitoring}
""",
        flush=True,
    )
