"""Reading the gateways' load: which gateway pods to ask, what they answer, and the sum.

Pure functions over the API's and the gateways' JSON; the requests themselves are made by
:mod:`vgate_operator.autoscale.loop`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

#: The gateway port that serves ``/load`` (the Service's and the container's port name).
INTERNAL_PORT_NAME = "internal"
LOAD_PATH = "/load"


class ModelLoad(BaseModel):
    """One model as one gateway process sees it."""

    model_config = ConfigDict(extra="ignore")

    inflight: int = 0
    queued: int = 0
    ready_workers: int = 0


class LoadReport(BaseModel):
    """A gateway's ``GET /load`` answer."""

    model_config = ConfigDict(extra="ignore")

    timestamp: float
    models: dict[str, ModelLoad] = {}


def parse_report(data: Any) -> LoadReport | None:
    """The report, or None when the answer is not one (read as "did not answer")."""
    try:
        return LoadReport.model_validate(data)
    except ValidationError:
        return None


def gateway_urls(slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """``/load`` URLs of the gateway pods behind the gateway Service's EndpointSlices.

    Ready endpoints, and terminating ones still serving: a gateway draining its streams
    still holds requests for the workers, and its queue still waits on them.
    """
    urls: set[str] = set()
    for piece in slices:
        port = next(
            (p.get("port") for p in piece.get("ports") or [] if p.get("name") == INTERNAL_PORT_NAME), None
        )
        if not port:
            continue
        for endpoint in piece.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            serving = conditions.get("serving", conditions.get("ready"))
            if conditions.get("ready") is False and not serving:
                continue
            for address in (endpoint.get("addresses") or [])[:1]:
                host = f"[{address}]" if ":" in address else address
                urls.add(f"http://{host}:{port}{LOAD_PATH}")
    return sorted(urls)


def total_load(reports: Sequence[LoadReport], models: Iterable[str]) -> dict[str, float]:
    """Each model's requests in flight plus queued, summed over the gateways that answered.

    A model a gateway does not list has no load there (the contract: absent or zero).
    """
    return {
        m: float(sum(r.models[m].inflight + r.models[m].queued for r in reports if m in r.models))
        for m in models
    }
