"""A kubelet for V-Gate's own pods on a kwok cluster: each pod's container runs as a local process.

kwok keeps the fake nodes alive and plays every other pod; pods labelled
``app.kubernetes.io/part-of=vgate`` are left to this process (kwok's
``disregardStatusWithLabelSelector``), which does what a kubelet does for them:

* gives each pod bound to a node an IP from the node's ``spec.podCIDR`` (the caller routes
  that range to the loopback of the network namespace this runs in) and reports it Running;
* runs its container as a process: the V-Gate images' entrypoint is ``vgate``, so the
  container's ``args`` (or ``command`` + ``args``) run with this virtualenv's Python; the pod's
  address replaces ``0.0.0.0`` (every pod has its own address, not its own namespace);
  ConfigMap volumes become files; ``env`` values and ``fieldRef``s are passed; the pod's
  ServiceAccount gets a token (TokenRequest) in a kubeconfig, so the process has exactly
  the permissions its Role grants;
* reports ``Ready`` from the container's own readiness probe (HTTP GET), so EndpointSlices,
  rollouts and the operator's status follow the processes, not a timer;
* on exit: restarts (``restartPolicy: Always``) or reports Succeeded / Failed;
* on deletion: SIGTERM, then SIGKILL after the grace period, then removes the pod.

Run as ``python -m tests.support.kubelet --kubeconfig ADMIN --workdir DIR --server URL``.
Every loop here is bounded by the pods' lifetimes; the process stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

log = logging.getLogger("kubelet")
SELECTOR = "app.kubernetes.io/part-of=vgate"
PROBE_PERIOD_S = 0.5
MAX_GRACE_S = 15.0
MAX_RESTARTS = 5


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Pod:
    namespace: str
    name: str
    uid: str
    ip: str
    dir: Path
    spec: dict[str, Any]
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    done: bool = False
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Kubelet:
    def __init__(self, api: httpx.AsyncClient, server: str, ca: str, workdir: Path) -> None:
        self.api = api
        self.server = server
        self.ca = ca
        self.workdir = workdir
        self.pods: dict[str, Pod] = {}  # uid -> pod
        self.used: set[str] = set()
        self.terminating: dict[str, asyncio.Task[None]] = {}

    # -- API helpers
    async def _patch_status(self, pod: Pod, status: dict[str, Any]) -> None:
        resp = await self.api.patch(
            f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}/status",
            json={"status": status},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        if resp.status_code not in (200, 404):
            log.warning("%s: status patch failed: %s %s", pod.key, resp.status_code, resp.text[:200])

    def _conditions(self, ready: bool) -> list[dict[str, Any]]:
        value = "True" if ready else "False"
        t = now()
        return [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t},
            {"type": "ContainersReady", "status": value, "lastTransitionTime": t},
            {"type": "Ready", "status": value, "lastTransitionTime": t},
        ]

    def _container_status(self, pod: Pod, state: dict[str, Any], ready: bool) -> list[dict[str, Any]]:
        c = pod.spec["containers"][0]
        return [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": c["image"],
                "ready": ready,
                "started": "running" in state,
                "restartCount": pod.restarts,
                "state": state,
            }
        ]

    async def _token(self, namespace: str, account: str) -> str | None:
        resp = await self.api.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token",
            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
        )
        if resp.status_code not in (200, 201):
            log.warning("token for %s/%s: %s %s", namespace, account, resp.status_code, resp.text[:200])
            return None
        return str(resp.json()["status"]["token"])

    # -- pod lifecycle
    def _allocate(self, cidr: str) -> str:
        for host in ipaddress.ip_network(cidr).hosts():
            ip = str(host)
            if ip not in self.used and not ip.endswith(".1"):
                self.used.add(ip)
                return ip
        raise RuntimeError(f"no free address in {cidr}")

    async def admit(self, obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj["spec"]
        node = spec.get("nodeName")
        if (
            not node
            or meta["uid"] in self.pods
            or (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        ):
            return
        resp = await self.api.get(f"/api/v1/nodes/{node}")
        if resp.status_code != 200:
            return
        cidr = resp.json()["spec"].get("podCIDR")
        if not cidr:
            return
        pod = Pod(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            ip=self._allocate(cidr),
            dir=self.workdir / meta["uid"],
            spec=spec,
        )
        pod.dir.mkdir(parents=True, exist_ok=True)
        self.pods[pod.uid] = pod
        log.info("%s: admitted on %s at %s", pod.key, node, pod.ip)
        await self._start(pod, meta)
        pod.tasks.append(asyncio.create_task(self._probe(pod)))

    async def _argv_env(self, pod: Pod, meta: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
        c = pod.spec["containers"][0]
        mounts = await self._volumes(pod)
        rewrite: dict[str, str] = {}
        for m in c.get("volumeMounts") or []:
            if m["name"] in mounts:
                rewrite[m["mountPath"]] = str(mounts[m["name"]])

        def fix(arg: str) -> str:
            arg = arg.replace("0.0.0.0", pod.ip)
            for mount in sorted(rewrite, key=len, reverse=True):  # the innermost mount, once
                if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
                    return rewrite[mount] + arg[len(mount) :]
            return arg

        def fix_script(script: str) -> str:
            # A shell script names mounts as words of its own (`--results /results/x`): one pass,
            # so a folder a mount was rewritten to is not rewritten again.
            mounts = "|".join(re.escape(m.rstrip("/")) for m in sorted(rewrite, key=len, reverse=True))
            pattern = re.compile(rf"(?<![\w./-])({mounts})(?=/|\s|;|'|\"|$)")

            def local(match: re.Match[str]) -> str:
                found = match.group(1)
                return str(rewrite.get(found) or rewrite[found + "/"])

            return pattern.sub(local, script) if rewrite else script

        command = c.get("command") or []
        args = [fix(str(a)) for a in c.get("args") or []]
        if command[:2] in (["sh", "-c"], ["/bin/sh", "-c"]) and len(command) > 2:
            command = [*command[:2], fix_script(command[2]), *command[3:]]
        if command:
            head = [sys.executable if command[0] in ("python", "python3") else command[0], *command[1:]]
            argv = [*head, *args]
        else:
            argv = [sys.executable, "-m", "vgate", *args]
        env = {
            # The images' `vgate` is on PATH: so is this virtualenv's.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "HOME": str(pod.dir),
            "PYTHONUNBUFFERED": "1",
            "TMPDIR": str(pod.dir),
        }
        fields = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "status.podIP": pod.ip,
        }
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = fix(str(var["value"]))
            elif "fieldRef" in (var.get("valueFrom") or {}):
                env[var["name"]] = fields.get(var["valueFrom"]["fieldRef"]["fieldPath"], "")
        if pod.spec.get("automountServiceAccountToken") is not False:
            token = await self._token(pod.namespace, pod.spec.get("serviceAccountName") or "default")
            if token:
                env["KUBECONFIG"] = str(self._kubeconfig(pod, token))
        return argv, env

    def _kubeconfig(self, pod: Pod, token: str) -> Path:
        path = pod.dir / "kubeconfig"
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.server, "certificate-authority": self.ca}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [
                {"name": "c", "context": {"cluster": "c", "user": "sa", "namespace": pod.namespace}}
            ],
            "current-context": "c",
        }
        path.write_text(json.dumps(cfg))
        return path

    async def _claim_path(self, namespace: str, claim: str) -> Path | None:
        """The hostPath of the PersistentVolume bound to ``claim``, where a node would mount it."""
        resp = await self.api.get(f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{claim}")
        volume = resp.json().get("spec", {}).get("volumeName") if resp.status_code == 200 else None
        if not volume:
            return None
        pv = await self.api.get(f"/api/v1/persistentvolumes/{volume}")
        host = (
            (pv.json().get("spec", {}).get("hostPath") or {}).get("path") if pv.status_code == 200 else None
        )
        return Path(host) if host else None

    async def _volumes(self, pod: Pod) -> dict[str, Path]:
        """ConfigMap volumes as folders of files; claims as their volume's hostPath; emptyDirs as empty folders."""
        found: dict[str, Path] = {}
        for vol in pod.spec.get("volumes") or []:
            if "persistentVolumeClaim" in vol:
                host = await self._claim_path(pod.namespace, vol["persistentVolumeClaim"]["claimName"])
                if host is not None:
                    host.mkdir(parents=True, exist_ok=True)
                    found[vol["name"]] = host
                    continue
            target = pod.dir / "volumes" / vol["name"]
            target.mkdir(parents=True, exist_ok=True)
            if "configMap" in vol:
                name = vol["configMap"]["name"]
                resp = await self.api.get(f"/api/v1/namespaces/{pod.namespace}/configmaps/{name}")
                if resp.status_code == 200:
                    for key, text in (resp.json().get("data") or {}).items():
                        (target / key).write_text(str(text).replace("0.0.0.0", pod.ip))
            found[vol["name"]] = target
        return found

    async def _start(self, pod: Pod, meta: dict[str, Any]) -> None:
        argv, env = await self._argv_env(pod, meta)
        out = (pod.dir / "container.log").open("ab")
        log.info("%s: run %s", pod.key, " ".join(argv[:8]))
        pod.proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True, cwd=pod.dir
        )
        out.close()
        started = now()
        await self._patch_status(
            pod,
            {
                "phase": "Running",
                "podIP": pod.ip,
                "podIPs": [{"ip": pod.ip}],
                "startTime": started,
                "conditions": self._conditions(False),
                "containerStatuses": self._container_status(pod, {"running": {"startedAt": started}}, False),
            },
        )
        pod.tasks.append(asyncio.create_task(self._wait(pod, meta)))

    def _probe_url(self, pod: Pod) -> str | None:
        c = pod.spec["containers"][0]
        probe = (c.get("readinessProbe") or {}).get("httpGet")
        if not probe:
            return None
        port = probe.get("port")
        if isinstance(port, str):
            port = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == port), None)
        return f"http://{pod.ip}:{port}{probe.get('path', '/')}"

    async def _probe(self, pod: Pod) -> None:
        url = self._probe_url(pod)
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not pod.done:
                running = pod.proc is not None and pod.proc.returncode is None
                ok = running
                if running and url:
                    try:
                        ok = (await client.get(url)).status_code < 400
                    except httpx.HTTPError:
                        ok = False
                if ok != pod.ready:
                    pod.ready = ok
                    log.info("%s: ready=%s", pod.key, ok)
                    state = {"running": {"startedAt": now()}}
                    await self._patch_status(
                        pod,
                        {
                            "conditions": self._conditions(ok),
                            "containerStatuses": self._container_status(pod, state, ok),
                        },
                    )
                await asyncio.sleep(PROBE_PERIOD_S)

    async def _wait(self, pod: Pod, meta: dict[str, Any]) -> None:
        assert pod.proc is not None
        code = await pod.proc.wait()
        if pod.done:
            return
        log.info("%s: exited %s", pod.key, code)
        policy = pod.spec.get("restartPolicy", "Always")
        restart = policy == "Always" or (policy == "OnFailure" and code != 0)
        if restart and pod.restarts < MAX_RESTARTS:
            pod.restarts += 1
            await asyncio.sleep(1.0)
            if not pod.done:
                await self._start(pod, meta)
            return
        pod.done = True
        terminated = {
            "terminated": {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "finishedAt": now(),
            }
        }
        await self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": self._conditions(False),
                "containerStatuses": self._container_status(pod, terminated, False),
            },
        )

    async def terminate(self, obj: dict[str, Any]) -> None:
        """The pod is being deleted: stop its process, then let the API server forget it."""
        meta = obj["metadata"]
        pod = self.pods.get(meta["uid"])
        if pod is not None and not pod.done:
            pod.done = True
            grace = min(MAX_GRACE_S, float(meta.get("deletionGracePeriodSeconds") or 30))
            await stop(pod.proc, grace)
        if pod is not None:
            for task in pod.tasks:
                task.cancel()
            self.used.discard(pod.ip)
            self.pods.pop(pod.uid, None)
        await self.api.delete(
            f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
            params={"gracePeriodSeconds": "0"},
        )

    async def forget(self, obj: dict[str, Any]) -> None:
        pod = self.pods.pop(obj["metadata"]["uid"], None)
        if pod is not None:
            pod.done = True
            await stop(pod.proc, 1.0)
            for task in pod.tasks:
                task.cancel()
            self.used.discard(pod.ip)

    # -- the watch
    async def run(self) -> None:
        while True:
            resp = await self.api.get("/api/v1/pods", params={"labelSelector": SELECTOR})
            resp.raise_for_status()
            body = resp.json()
            for item in body.get("items") or []:
                await self._event("ADDED", item)
            version = body["metadata"]["resourceVersion"]
            try:
                async with self.api.stream(
                    "GET",
                    "/api/v1/pods",
                    params={"labelSelector": SELECTOR, "watch": "true", "resourceVersion": version,
                            "timeoutSeconds": "300"},
                    timeout=httpx.Timeout(10.0, read=None),
                ) as stream:  # fmt: skip
                    async for line in stream.aiter_lines():
                        if line.strip():
                            event = json.loads(line)
                            if event.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                                await self._event(event["type"], event["object"])
            except httpx.HTTPError as exc:
                log.warning("watch ended: %s", exc)
                await asyncio.sleep(1.0)

    async def _event(self, kind: str, obj: dict[str, Any]) -> None:
        try:
            if kind == "DELETED":
                await self.forget(obj)
            elif obj["metadata"].get("deletionTimestamp"):
                uid = obj["metadata"]["uid"]
                if uid not in self.terminating:
                    self.terminating[uid] = asyncio.create_task(self.terminate(obj))
            else:
                await self.admit(obj)
        except (httpx.HTTPError, OSError, KeyError) as exc:
            log.warning("%s/%s: %s", obj["metadata"].get("namespace"), obj["metadata"].get("name"), exc)


async def stop(proc: asyncio.subprocess.Process | None, grace: float) -> None:
    if proc is None or proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


def client_from_kubeconfig(path: Path) -> tuple[httpx.AsyncClient, str, str]:
    cfg = yaml.safe_load(path.read_text())
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    base = Path(path).parent
    ca = str(base / cluster["certificate-authority"])
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(str(base / user["client-certificate"]), str(base / user["client-key"]))
    client = httpx.AsyncClient(base_url=cluster["server"], verify=context, timeout=15.0)
    return client, cluster["server"], ca


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    client, server, ca = client_from_kubeconfig(args.kubeconfig)
    kubelet = Kubelet(client, server, ca, args.workdir)
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(kubelet.run())
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass
    finally:
        for pod in list(kubelet.pods.values()):
            pod.done = True
            await stop(pod.proc, 5.0)
        await client.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
