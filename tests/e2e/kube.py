"""What the end-to-end suite needs from a cluster: a context guard, kubectl, waiting, URLs.

The pure parts (which kube-context may be used, condition lookup, polling, the gateway's
URL behind the Ingress) are unit-tested in ``tests/unit/test_e2e_*.py``; ``Kubectl`` is the
only piece that touches a cluster, always with an explicit ``--context``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vgate import waiting

T = TypeVar("T")
#: Only kind clusters are ever touched: their contexts are named ``kind-<cluster>``.
KIND_PREFIX = "kind-"
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Guard:
    """Whether the suite may run, and against which context; ``reason`` says why not."""

    context: str | None
    run: bool
    error: bool
    reason: str


def kubeconfig_paths(env: Mapping[str, str]) -> list[Path]:
    """The kubeconfig files kubectl would read: ``$KUBECONFIG`` (a path list) or ``~/.kube/config``."""
    if env.get("KUBECONFIG"):
        return [Path(p).expanduser() for p in env["KUBECONFIG"].split(os.pathsep) if p]
    return [Path(env.get("HOME", "~")).expanduser() / ".kube" / "config"]


def current_context(paths: Sequence[Path]) -> str | None:
    """The ``current-context`` kubectl would use: the first file that sets one wins."""
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(config, dict) and config.get("current-context"):
            return str(config["current-context"])
    return None


def decide(env: Mapping[str, str], kubeconfig_context: str | None) -> Guard:
    """Decide whether the suite runs.

    ``VGATE_E2E=1`` asks for the suite explicitly (``make e2e-kind``); then a missing or
    non-kind context is an error. Without it the suite only ever skips, so ``pytest tests/``
    stays green on any machine and never touches a cluster nobody asked it to use.
    """
    requested = env.get("VGATE_E2E", "").strip().lower() in _TRUE
    context = env.get("VGATE_E2E_CONTEXT") or kubeconfig_context
    if context is None:
        return Guard(None, False, requested, "no Kubernetes cluster is configured (no kube-context)")
    if not context.startswith(KIND_PREFIX):
        reason = f"refusing kube-context {context!r}: the e2e suite only runs against kind clusters ({KIND_PREFIX}*)"
        return Guard(context, False, requested, reason)
    if not requested:
        reason = f"kind context {context!r} found; set VGATE_E2E=1 (or run make e2e-kind) to use it"
        return Guard(context, False, False, reason)
    return Guard(context, True, False, f"running against {context!r}")


def condition(obj: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    """The ``status.conditions`` entry of type ``kind``, if any."""
    for entry in (obj.get("status") or {}).get("conditions") or []:
        if entry.get("type") == kind:
            return entry
    return None


def is_condition(obj: Mapping[str, Any], kind: str, status: str = "True") -> bool:
    """True when ``kind`` has ``status`` and describes the current generation.

    A condition written for an older generation says nothing about the spec just applied.
    """
    entry = condition(obj, kind)
    if entry is None or entry.get("status") != status:
        return False
    generation = (obj.get("metadata") or {}).get("generation")
    observed = entry.get("observedGeneration", (obj.get("status") or {}).get("observedGeneration"))
    return generation is None or observed is None or observed >= generation


#: What kubectl raises while an object is not there yet: retried by :func:`wait_for`.
KUBECTL_ERRORS = (subprocess.CalledProcessError, OSError, ValueError, KeyError)


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 1.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``probe`` until it returns something truthy; return that (:func:`vgate.waiting.wait_for`).

    kubectl's errors count as "not yet"; the TimeoutError names ``what`` and the last one, so a
    failure says what was being waited for instead of just "timed out".
    """
    found = waiting.wait_for(
        probe, what, within=timeout, interval=interval, retry=KUBECTL_ERRORS, clock=clock, sleep=sleep
    )
    assert found is not None
    return found


@dataclass(frozen=True)
class IngressTarget:
    """Where the gateway answers from outside the cluster: a base URL and a Host header."""

    base_url: str
    host: str | None

    @property
    def api_base(self) -> str:
        """The OpenAI client's ``base_url``."""
        return self.url("/v1")

    @property
    def headers(self) -> dict[str, str]:
        """Headers that make ingress-nginx pick the VGateDeployment's Ingress rule."""
        return {"Host": self.host} if self.host else {}

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + "/" + path.lstrip("/")


def ingress_target(resource: Mapping[str, Any], base_url: str = "http://localhost") -> IngressTarget:
    """The gateway behind ``resource``'s Ingress, reached via ``base_url`` (kind maps port 80).

    Sending the Ingress host as Host header works where ``*.localtest.me`` does not resolve.
    """
    ingress = (resource.get("spec") or {}).get("ingress") or {}
    if not ingress.get("enabled"):
        raise ValueError(f"{resource['metadata']['name']}: spec.ingress.enabled is not true")
    return IngressTarget(base_url=base_url, host=ingress.get("host") or None)


class Kubectl:
    """``kubectl`` pinned to one context and namespace; JSON in, JSON out."""

    def __init__(self, context: str, namespace: str, binary: str = "kubectl") -> None:
        self.context, self.namespace, self.binary = context, namespace, binary

    def run(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """Run kubectl; raise CalledProcessError (with stderr) when it fails."""
        cmd = [self.binary, "--context", self.context, "--namespace", self.namespace, *args]
        done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise subprocess.CalledProcessError(done.returncode, cmd, done.stdout, done.stderr)
        return done.stdout

    def get(self, kind: str, name: str | None = None, selector: str | None = None) -> Any:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args))

    def apply(self, obj: Mapping[str, Any]) -> None:
        self.run("apply", "-f", "-", stdin=json.dumps(obj))

    def patch(self, kind: str, name: str, patch: Any, patch_type: str = "merge") -> None:
        self.run("patch", kind, name, "--type", patch_type, "-p", json.dumps(patch))

    def delete(self, kind: str, name: str) -> None:
        self.run("delete", kind, name, "--ignore-not-found", "--wait=false")
