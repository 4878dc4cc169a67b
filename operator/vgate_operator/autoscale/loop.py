"""The builtin autoscaler: one loop per VGateDeployment whose models scale on load.

Every ``interval`` seconds: list the gateway Service's EndpointSlices, ask each gateway pod
for its ``/load`` on the internal port (short timeout), sum each model's requests in flight
plus queued over the pods that answered, feed :func:`~vgate_operator.autoscale.policy.decide`,
and when the count changes, set the worker Deployment's replicas (under the autoscaler's
own field manager, see :meth:`~vgate_operator.k8s.KubeApi.scale`) and post an Event that says
why. A gateway that does not answer is left out of the sum with a warning, never read as
zero load; when none answers, no sample is recorded and the policy holds.

The policy's memory lives in this loop; a restarted operator starts it afresh, which the
policy treats as "the current count was just chosen" (no early scale-down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from vgate_operator.autoscale.checks import runs_builtin
from vgate_operator.autoscale.load import LoadReport, gateway_urls, parse_report, total_load
from vgate_operator.autoscale.policy import Decision, PolicySettings, Sample, ScaleState, decide
from vgate_operator.builders.common import Manifest
from vgate_operator.spec import InvalidSpecError, ModelSpec, gateway_name, parse_spec, worker_name

log = logging.getLogger(__name__)


class ScaleApi(Protocol):
    """What the loop needs of :class:`~vgate_operator.k8s.KubeApi`."""

    async def get(self, kind: str, namespace: str, name: str) -> Manifest | None: ...
    async def select(self, kind: str, namespace: str, selector: str) -> list[Manifest]: ...
    async def scale(self, namespace: str, name: str, replicas: int) -> Manifest: ...
    async def post_event(
        self, involved: Manifest, reason: str, message: str, kind: str = "Normal"
    ) -> None: ...


@dataclass
class Track:
    """One model's memory: recent samples and the policy's state."""

    samples: deque[Sample] = field(default_factory=deque)
    state: ScaleState | None = None


@dataclass
class Autoscaler:
    """The loop's state for one VGateDeployment; :meth:`tick` is one round."""

    api: ScaleApi
    http: aiohttp.ClientSession
    timeout_s: float = 1.0
    clock: Callable[[], float] = time.monotonic
    tracks: dict[str, Track] = field(default_factory=dict)
    #: Gateways that failed last round (warned once until they answer again).
    silent: set[str] = field(default_factory=set)

    async def tick(self, body: Mapping[str, Any]) -> list[Decision]:
        """One round over every model the builtin engine scales; returns the changes made."""
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        try:
            spec = parse_spec(name, body.get("spec") or {})
        except InvalidSpecError:
            return []  # the reconcile reports it
        models = [m for i, m in enumerate(spec.models) if runs_builtin(i, m)]
        self.tracks = {m.name: self.tracks.get(m.name) or Track() for m in models}
        if not models:
            return []
        reports = await self.read_gateways(namespace, gateway_name(name))
        now = self.clock()
        totals = total_load(reports, [m.name for m in models]) if reports else None
        changes = []
        for model in models:
            decision = await self._scale_model(body, model, now, totals)
            if decision is not None:
                changes.append(decision)
        return changes

    async def read_gateways(self, namespace: str, service: str) -> list[LoadReport]:
        """The reports of every gateway pod that answered in time."""
        slices = await self.api.select("EndpointSlice", namespace, f"kubernetes.io/service-name={service}")
        urls = gateway_urls(slices)
        answers = await asyncio.gather(*(self._read(url) for url in urls))
        reports = [r for r in answers if r is not None]
        if urls and not reports:
            log.warning("%s/%s: no gateway answered /load (%d asked): holding every model's replicas",
                        namespace, service, len(urls))  # fmt: skip
        return reports

    async def _read(self, url: str) -> LoadReport | None:
        problem = ""
        try:
            timeout = aiohttp.ClientTimeout(total=self.timeout_s)
            async with self.http.get(url, timeout=timeout) as response:
                if response.status == 200:
                    report = parse_report(await response.json(content_type=None))
                    if report is not None:
                        self.silent.discard(url)
                        return report
                    problem = "an answer that is not a load report"
                else:
                    problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if url not in self.silent:
            log.warning(
                "gateway %s did not answer (%s): left out of the load, not counted as zero", url, problem
            )
            self.silent.add(url)
        return None

    async def _scale_model(
        self, body: Mapping[str, Any], model: ModelSpec, now: float, totals: Mapping[str, float] | None
    ) -> Decision | None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        target = worker_name(name, model.name)
        deployment = await self.api.get("Deployment", namespace, target)
        auto = model.autoscaling
        if deployment is None or auto is None:
            return None  # the reconcile creates it
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        ready = int((deployment.get("status") or {}).get("readyReplicas") or 0)
        settings = PolicySettings.from_spec(auto, model.max_num_seqs)
        track = self.tracks[model.name]
        if track.state is None:
            track.state = ScaleState.starting(now, current)
        if totals is not None:
            track.samples.append(Sample(now, totals.get(model.name, 0.0)))
        while track.samples and now - track.samples[0].at > settings.history_s:
            track.samples.popleft()
        decision = decide(list(track.samples), now, current, ready, settings, track.state)
        track.state = decision.state
        if decision.replicas == current:
            return None
        await self.api.scale(namespace, target, decision.replicas)
        message = f"{model.name}: {current} → {decision.replicas}, {decision.reason}"
        log.info("%s/%s: %s", namespace, name, message)
        reason = "ScaledUp" if decision.replicas > current else "ScaledDown"
        await self.api.post_event(dict(body), reason, message)
        return decision


async def run(
    body: Mapping[str, Any],
    api: ScaleApi,
    stopped: Any,
    *,
    interval_s: float,
    timeout_s: float,
) -> None:
    """Tick every ``interval_s`` until ``stopped`` (kopf's daemon flag) is set.

    ``body`` is kopf's live view of the resource: each round reads the spec as it is now.
    An API or network failure skips the round; the next one tries again.
    """
    async with aiohttp.ClientSession() as http:
        scaler = Autoscaler(api, http, timeout_s=timeout_s)
        while not stopped:
            try:
                await scaler.tick(body)
            except (ApiException, aiohttp.ClientError, TimeoutError) as exc:
                log.warning(
                    "autoscaler round of %s failed, the next one retries: %s", body["metadata"]["name"], exc
                )
            await stopped.wait(interval_s)
