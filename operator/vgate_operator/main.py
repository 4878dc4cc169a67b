"""kopf registrations: each handler is a thin call into :func:`reconcile`."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

import aiohttp
import kopf
from kubernetes_asyncio.client.exceptions import ApiException

from vgate_operator.autoscale import loop
from vgate_operator.builders.common import GROUP, MANAGED_BY, PLURAL, VERSION
from vgate_operator.k8s import KubeApi, connect
from vgate_operator.metrics import OperatorMetrics
from vgate_operator.reconcile import controller_of, reconcile, refresh_status
from vgate_operator.settings import OperatorSettings

RESOURCE = (GROUP, VERSION, PLURAL)
CHILD_LABELS = {"app.kubernetes.io/name": "vgate", "app.kubernetes.io/managed-by": MANAGED_BY}


def scales_builtin(spec: kopf.Spec, **_: Any) -> bool:
    """Whether a resource has a model the operator's own loop scales (valid or not: the loop checks)."""
    return any(
        isinstance(m, dict)
        and isinstance(m.get("autoscaling"), dict)
        and m["autoscaling"].get("engine", "builtin") == "builtin"
        for m in spec.get("models") or []
    )


async def _counted(metrics: OperatorMetrics, reconciling: Awaitable[int]) -> None:
    """Await one reconcile and count how it ended; its exception goes on to kopf."""
    try:
        await reconciling
    except kopf.PermanentError:
        metrics.count("invalid_spec")
        raise
    except Exception:  # TemporaryError or a bug; cancellation (shutdown) is not a failure
        metrics.count("error")
        raise
    metrics.count("ok")


def register(
    registry: kopf.OperatorRegistry, config: OperatorSettings, metrics: OperatorMetrics | None = None
) -> None:
    """Register V-Gate's handlers in ``registry`` (one operator per process)."""
    counts = metrics or OperatorMetrics()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Only warnings and errors become Kubernetes Events: a quiet resync must not write.
        settings.posting.level = logging.WARNING
        # A deletion that arrives during a resync pass waits for the pass to end; kopf checks
        # again only after this many seconds (default 60), which would hold the finalizer.
        settings.background.cancellation_polling = 1.0
        # Filter child Deployments on the server: a client-side label filter would still make
        # the API server stream every Deployment of the cluster to this process.
        settings.watching.label_selectors["apps", "deployments"] = ",".join(
            f"{k}={v}" for k, v in sorted(CHILD_LABELS.items())
        )
        memo.kube = KubeApi(await connect())  # cli.main has checked the credentials

    @kopf.on.cleanup(registry=registry)
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        await memo.kube.close()

    @kopf.on.create(*RESOURCE, id="reconcile-create", registry=registry)
    @kopf.on.update(*RESOURCE, id="reconcile-update", registry=registry)
    @kopf.on.resume(*RESOURCE, id="reconcile-resume", registry=registry)
    async def on_change(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        if memo.kube.closed:
            raise kopf.TemporaryError("the operator is stopping", delay=config.retry_delay_s)
        await _counted(
            counts,
            reconcile(
                body,
                patch,
                memo.kube,
                retry_delay=config.retry_delay_s,
                refused_delay=config.refused_retry_delay_s,
            ),
        )

    @kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, id="child-deployment", registry=registry)
    async def child_deployment(body: kopf.Body, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
        # Pods becoming ready change only the Deployment's status: report it now, not at the next resync.
        parent = controller_of(body)
        if parent is None or memo.kube.closed:
            return
        name, uid = parent
        try:
            await refresh_status(memo.kube, body.metadata.namespace or "", name, uid)
        except (ApiException, aiohttp.ClientError) as exc:
            logger.warning("status refresh of %s failed, the resync will retry: %s", name, exc)

    @kopf.timer(
        *RESOURCE,
        id="resync",
        interval=config.resync_interval_s,
        initial_delay=config.resync_interval_s,
        registry=registry,
    )
    async def resync(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        if memo.kube.closed:
            return  # kopf may fire a timer once more while exiting: the next operator resyncs
        await _counted(
            counts, reconcile(body, patch, memo.kube, retry_delay=config.retry_delay_s, timer=True)
        )

    # Started for a resource while one of its models scales on the builtin engine, stopped
    # when none does any more (kopf re-checks ``when`` on every change) or the resource goes.
    @kopf.daemon(*RESOURCE, id="autoscale", when=scales_builtin, cancellation_timeout=10, registry=registry)
    async def autoscale(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
        await loop.run(
            body, memo.kube, stopped, interval_s=config.autoscale_interval_s, timeout_s=config.load_timeout_s
        )
