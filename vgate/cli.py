"""The ``vgate`` command line: one entry point, one subcommand per component.

Each subcommand lives in its own package and exposes ``main(argv) -> int``. Only the
chosen subcommand is imported, so ``vgate worker`` never loads the operator's
Kubernetes stack and ``vgate --help`` starts instantly.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# name -> (module exposing main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "dev": ("vgate.dev", "run the local stack: gateway + dry-run workers on loopback"),
    "gateway": ("vgate_gateway.cli", "run the OpenAI-compatible gateway"),
    "worker": ("vgate_worker.cli", "run a worker: vLLM, or the dry-run simulator (--dry-run)"),
    "operator": ("vgate_operator.cli", "run the Kubernetes operator for VGateDeployment resources"),
    "render": (
        "vgate_operator.render",
        "print the Kubernetes objects the operator would apply for a resource",
    ),
    "tune": (
        "vgate.tune.cli",
        "find the engine settings that serve a workload best within its latency targets",
    ),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vgate <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'vgate <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        from importlib.metadata import version

        print(f"vgate {version('vgate')}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        print(f"vgate: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[command][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
