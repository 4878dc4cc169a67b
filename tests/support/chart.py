"""The Helm chart rendered by Helm's own engine (helm-python-sdk binds Helm's Go SDK)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "vgate"
RELEASE, NAMESPACE = "rel", "vgate-system"


def manifests(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text for an install of release ``rel`` with ``values``."""
    with helm.Chart.load(str(CHART)) as chart:
        rendered: dict[str, str] = chart.render(
            values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True
        )
    return rendered


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``."""
    docs = []
    for path, text in manifests(values).items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
