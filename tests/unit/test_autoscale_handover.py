"""Turning autoscaling on hands a worker Deployment's replicas to the autoscaler before the apply."""

from __future__ import annotations

from typing import Any

from vgate_operator.builders import Owner, build_all
from vgate_operator.k8s import AUTOSCALER_MANAGER, FIELD_MANAGER, KubeApi
from vgate_operator.spec import parse_spec

OWNER = Owner(name="demo", namespace="llm", uid="u1")


class RecordingApi(KubeApi):
    """KubeApi whose requests are recorded and answered from one live object."""

    def __init__(self, live: dict[str, Any]) -> None:
        super().__init__(None)  # type: ignore[arg-type]
        self.live = live
        self.requests: list[tuple[str, dict[str, str], Any]] = []

    async def call(self, method: str, path: str, body: Any = None, content_type: str | None = None,
                   query: list[tuple[str, str]] | None = None) -> dict[str, Any]:  # fmt: skip
        self.requests.append((method, dict(query or []), body))
        return self.live


def worker(autoscaling: bool) -> dict[str, Any]:
    model: dict[str, Any] = {"name": "qwen", "replicas": 3}
    if autoscaling:
        model["autoscaling"] = {"maxReplicas": 6}
    spec = parse_spec(OWNER.name, {"models": [model], "worker": {"dryRun": True}})
    return next(
        o for o in build_all(OWNER, spec) if o["kind"] == "Deployment" and "worker" in o["metadata"]["name"]
    )


def live_owned_by(manager: str, fixed: dict[str, Any]) -> dict[str, Any]:
    return {
        **fixed,
        "metadata": {
            **fixed["metadata"],
            "annotations": {"vgate.io/spec-hash": "old"},
            "resourceVersion": "7",
            "managedFields": [
                {
                    "manager": manager,
                    "operation": "Apply",
                    "fieldsV1": {"f:spec": {"f:replicas": {}, "f:template": {}}},
                }
            ],
        },
        "spec": {**fixed["spec"], "replicas": 3},
    }


async def test_the_live_count_goes_to_the_autoscaler_first() -> None:
    api = RecordingApi(live_owned_by(FIELD_MANAGER, worker(autoscaling=False)))
    await api.apply(OWNER, worker(autoscaling=True))
    patches = [(q.get("fieldManager"), body) for method, q, body in api.requests if method == "PATCH"]
    assert [m for m, _ in patches] == [AUTOSCALER_MANAGER, FIELD_MANAGER]
    assert patches[0][1]["spec"] == {"replicas": 3}  # the live count, nothing else
    assert "replicas" not in patches[1][1]["spec"]


async def test_no_hand_over_when_the_operator_does_not_own_the_count() -> None:
    api = RecordingApi(live_owned_by(AUTOSCALER_MANAGER, worker(autoscaling=False)))
    await api.apply(OWNER, worker(autoscaling=True))
    managers = [q.get("fieldManager") for method, q, _ in api.requests if method == "PATCH"]
    assert managers == [FIELD_MANAGER]
