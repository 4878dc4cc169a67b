"""Lint a Helm chart with Helm's own Go SDK (helm-python-sdk) when no ``helm`` binary is at hand.

    python hack/chart_lint.py charts/vgate

Lints strictly (warnings fail) with the default values and with the optional objects
switched on, like ``helm lint --strict``; prints every finding; exits 1 on any warning or error.
"""

from __future__ import annotations

import sys

import helm_python as helm

# Values that switch on every optional template, so all of them are linted.
ALL_ON = {
    "deployment": {"enabled": True},
    "metrics": {
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "operatorPodMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "dashboard": {"enabled": True},
    },
}
_SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def lint(chart: str) -> int:
    """Lint ``chart`` with default and all-on values; return the number of warnings and errors."""
    failures = 0
    for label, values in (("defaults", None), ("all optional objects on", ALL_ON)):
        report = helm.lint(chart, values, strict=True)
        for msg in report["messages"]:
            severity = _SEVERITY.get(msg["severity"], "?")
            print(f"[{severity}] {label}: {msg['path']}: {msg['error']}")
            failures += msg["severity"] >= 2
        for error in report["errors"]:
            print(f"[ERROR] {label}: {error}")
            failures += 1
    return failures


def main(argv: list[str]) -> int:
    """Lint each chart named on the command line (default: charts/vgate)."""
    charts = argv or ["charts/vgate"]
    failed = sum(lint(chart) for chart in charts)
    print(f"{len(charts)} chart(s) linted, {failed} failure(s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
