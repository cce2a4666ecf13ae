"""Least privilege on the real API server.

- RBAC: the operator runs with exactly the chart's namespaced RBAC (a Role in the watched namespace,
  a Role for its Lease, nothing cluster-wide), talking to the API server through a recording proxy,
  through a scenario that exercises everything it does (create, scale up, annotate busy pods, rescue
  the jobs of a deleted pod, scale down, drop a pool, refuse a pool the pod policy forbids, release the
  JobQueue, lead through a Lease).
  Every request it made is mapped to (API group, resource, verb): none was refused, none was
  cluster-scoped (a namespaced install needs no cluster-wide right), and every granted permission
  was used - nothing is granted "just in case".
- Pods: the worker pods the operator creates are admitted in a namespace that enforces the
  ``restricted`` Pod Security Standard (the chart's own pods are checked by tests/k8s/test_install.py).
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.k8s.cluster import Cluster, wait_for
from tests.k8s.test_operator import CRD, Api, Operator, cancel, cpu_pool, enqueue, gpu_pool, jobqueue, wait_count
from tests.operator.support import claim

pytestmark = pytest.mark.timeout(420)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
              "proxy-connection", "te", "trailer", "content-encoding"}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    query: str
    status: int

    def permission(self) -> tuple[str, str, str, str | None] | None:
        """(API group, resource[/subresource], verb, namespace) as RBAC sees it; None for discovery."""
        m = re.match(r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?"
                     r"/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$", self.path)
        if not m or (m["resource"] == "namespaces" and m["ns"] is None and m["name"] is None and False):
            return None
        group, ns, resource, name, sub = m["group"] or "", m["ns"], m["resource"], m["name"], m["sub"]
        if not group and resource == "namespaces" and name:
            ns = name  # a get of one namespace is authorized in that namespace (a Role there grants it)
        if self.path.startswith("/api/v1/namespaces/") and resource is not None and ns is None:
            return None
        watch = parse_qs(self.query).get("watch", ["false"])[0] in ("true", "1")
        verb = {"GET": "watch" if watch else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete" if name else "deletecollection"}[self.method]
        return group, f"{resource}/{sub}" if sub else resource, verb, ns


class Recorder:
    """An HTTP reverse proxy to the API server (TLS upstream) that records every request."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls: list[Call] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="api-recorder", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> Recorder:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=False),
                                              timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def stop() -> None:
            if self._session:  # ends the upstream watches, and with them the handlers streaming them
                await self._session.close()
            if self._runner:
                await self._runner.cleanup()
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = await request.read()
        # The Kubernetes client may send a body without Content-Type (the API server assumes JSON):
        # aiohttp must not add its own application/octet-stream.
        async with self._session.request(request.method, self.upstream + request.rel_url.raw_path_qs,
                                         headers=headers, data=body or None,
                                         skip_auto_headers=["Content-Type"]) as up:
            self.calls.append(Call(request.method, request.rel_url.path, request.rel_url.query_string, up.status))
            response = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP})
            await response.prepare(request)
            try:
                async for chunk in up.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (aiohttp.ClientError, ConnectionError):
                pass  # the operator closed a watch (or the proxy is stopping): nothing left to relay
            return response


def render_rbac(release_ns: str, watched: str, lease: str) -> list[dict[str, Any]]:
    """The chart's RBAC (and ServiceAccount) for a namespaced operator watching ``watched``."""
    from tests.ship.tools import docs, template

    values = {"operator": {"clusterWide": False, "watchNamespaces": [watched],
                           "leaderElection": {"enabled": True, "leaseName": lease}},
              "database": {"url": "postgresql://skiplock@db.invalid/skiplock"}}
    rendered = docs(template(values, namespace=release_ns, show_only=["rbac.yaml", "serviceaccount.yaml"]).stdout)
    return rendered


@pytest.fixture(scope="module")
def crd_cluster(k8s_cluster: Cluster) -> Cluster:
    k8s_cluster.kubectl("apply", "-f", str(CRD))
    k8s_cluster.wait_established("jobqueues.skiplock.dev")
    return k8s_cluster


@pytest.fixture
def watched(crd_cluster: Cluster, dsn: str) -> Iterator[str]:
    name = f"lp-{secrets.token_hex(3)}"
    crd_cluster.kubectl("create", "namespace", name)
    crd_cluster.kubectl("create", "secret", "generic", "db", "-n", name, f"--from-literal=DATABASE_URL={dsn}")
    yield name
    crd_cluster.kubectl("delete", "jobqueues", "--all", "-n", name, "--timeout=30s", check=False)
    crd_cluster.kubectl("delete", "namespace", name, "--wait=false")


def sa_kubeconfig(cluster: Cluster, namespace: str, account: str, server: str, path: Path) -> Path:
    token = cluster.kubectl("-n", namespace, "create", "token", account, "--duration=1h").stdout.strip()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": account}}]}))
    return path


def test_the_operator_uses_every_permission_the_chart_grants_and_nothing_cluster_wide(
        crd_cluster: Cluster, watched: str, dsn: str, tmp_path: Path) -> None:
    cluster, lease = crd_cluster, f"lease-{watched}"
    rbac = render_rbac(watched, watched, lease)  # release and watched namespace are the same here
    kinds = sorted(d["kind"] for d in rbac)
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, kinds
    cluster.kubectl("apply", "-n", watched, "-f", "-", input="\n---\n".join(yaml.safe_dump(d) for d in rbac))
    (account,) = [d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount"]
    granted = {(g, r, v) for d in rbac if d["kind"] == "Role" for rule in d["rules"]
               for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}

    recorder = Recorder(cluster.server).start()
    try:
        kubeconfig = sa_kubeconfig(cluster, watched, account, f"http://127.0.0.1:{recorder.port}",
                                   tmp_path / "kubeconfig")
        op = Operator(cluster, watched, tmp_path / "operator.log", "--peering", lease, "--lease-namespace", watched,
                      kubeconfig=kubeconfig).start()
        api = Api(cluster, watched)
        try:
            exercise(api, dsn)
        finally:
            code = op.stop()
        assert code == 0, op.tail()
    finally:
        recorder.stop()
    calls = [c for c in recorder.calls if c.permission() is not None]
    refused = sorted({(c.method, c.path, c.status) for c in calls if c.status in (401, 403)})
    assert not refused, f"requests the chart's RBAC refused: {refused}"
    cluster_scoped = sorted({(c.method, c.path) for c in calls if c.permission()[3] is None})  # type: ignore[index]
    assert not cluster_scoped, f"a namespaced operator made cluster-scoped requests: {cluster_scoped}"
    used = {p[:3] for c in calls if (p := c.permission())}
    unused = sorted(granted - used)
    assert not unused, f"granted but never used: {unused} (used: {sorted(used)})"
    print(f"rbac: {len(granted)} grants, all used; {len(calls)} requests, 0 refused, 0 cluster-scoped")


def exercise(api: Api, dsn: str) -> None:
    """Everything the operator does, once."""
    api.apply(jobqueue("lp", cpu_pool(concurrency=2, maxReplicas=3), gpu_pool(maxReplicas=1)))
    wait_for(lambda: api.condition("lp", "Ready").get("status") == "True", 60, "Ready")
    ids = asyncio.run(enqueue(dsn, 7))
    pods = wait_count(lambda: api.running("cpu"), 3, "3 cpu pods")
    busy, gone = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]
    vanished = "lp-cpu-7c9d8f6b5-vanis"  # a pod of the pool the operator never saw (deleted while it was away)
    claim(dsn, busy, 2)
    claim(dsn, gone, 2, lease_seconds=600)
    claim(dsn, vanished, 1, lease_seconds=600)
    api.cluster.kubectl("delete", "pod", gone, "-n", api.ns, "--grace-period=0", "--force")
    def rescued(worker: str) -> bool:
        return any(worker in m for m in api.events("JobsRescued"))

    for name in (gone, vanished):  # seen deleted; looked up (get) and not found
        wait_for(functools.partial(rescued, name), 60, f"{name}'s jobs rescued")
    asyncio.run(cancel(dsn, ids))
    wait_for(lambda: api.replicas("lp-cpu") == 1, 60, "scaled down to the busy pod")
    def costed() -> bool:
        pods = api.pods("cpu")
        return bool(pods) and all("controller.kubernetes.io/pod-deletion-cost" in p["metadata"].get("annotations", {})
                                  for p in pods)

    wait_for(costed, 60, "pod deletion costs")
    api.apply(jobqueue("lp", cpu_pool(concurrency=2, maxReplicas=3)))
    wait_for(lambda: "lp-gpu" not in api.deployments(), 60, "the gpu pool's Deployment deleted")
    # A pool the pod policy refuses (no admission policy here): the namespace's labels are read.
    api.apply(jobqueue("lp-root", cpu_pool(podSecurityContext={"runAsUser": 0})))
    wait_for(lambda: api.condition("lp-root", "Ready").get("reason") == "PoolRefused", 60, "the pool refused")
    api.cluster.kubectl("delete", "jq", "lp-root", "-n", api.ns, "--timeout=60s")
    api.cluster.kubectl("delete", "jq", "lp", "-n", api.ns, "--timeout=60s")  # the finalizer is released


def test_worker_pods_pass_the_restricted_pod_security_standard(crd_cluster: Cluster, watched: str,
                                                               tmp_path: Path) -> None:
    cluster = crd_cluster
    cluster.kubectl("label", "namespace", watched, "pod-security.kubernetes.io/enforce=restricted",
                    "pod-security.kubernetes.io/enforce-version=latest")
    op = Operator(cluster, watched, tmp_path / "operator.log", "--standalone").start()
    api = Api(cluster, watched)
    try:
        api.apply(jobqueue("pss", cpu_pool(minReplicas=1), gpu_pool(minReplicas=1)))

        def outcome() -> str | None:
            refused = [m for m in api.events("FailedCreate") if "PodSecurity" in m]
            if refused:
                return "refused: " + refused[0]
            if len(api.running("cpu")) == 1 and len(api.running("gpu")) == 1:
                return "running"
            return None

        result = wait_for(outcome, 90, "worker pods admitted or refused")
        assert result == "running", result
        for pod in api.pods():
            spec = pod["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
            for container in spec["containers"]:
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
                assert sc.get("readOnlyRootFilesystem") is True
    finally:
        cluster.kubectl("delete", "jobqueues", "--all", "-n", watched, "--timeout=30s", check=False)
        op.stop()


def test_the_dsn_reaches_pods_only_through_a_secret() -> None:
    """The chart (with a DSN given as a value, and the UI on) puts the DSN in Secrets only: the
    database Secret, and the migration hook's own (the database Secret does not exist yet when Helm
    runs the pre-install hook; Helm deletes the hook's once the Job succeeded). Every pod reads it
    through a secretKeyRef. The worker Deployments the operator writes do the same (and the CRD
    refuses a JobQueue that sets DATABASE_URL inline: tests/k8s/test_operator.py)."""
    from skiplock.operator import resources
    from skiplock.operator.spec import parse
    from tests.ship.tools import docs, template

    password = "pw-" + secrets.token_hex(8)
    objects = docs(template({"database": {"url": f"postgresql://u:{password}@db.example/skiplock"},
                             "ui": {"enabled": True}}).stdout)
    holders = [f"{o['kind']}/{o['metadata']['name']}" for o in objects if password in json.dumps(o)]
    assert holders == ["Secret/skiplock-database", "Secret/skiplock-migration"], holders
    migration = next(o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "skiplock-migration")
    assert "hook-succeeded" in migration["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    deployments = [o for o in objects if o["kind"] in ("Deployment", "Job")]
    spec = parse({"database": {"secretRef": {"name": "db"}}, "queues": ["q"],
                  "pools": [{"name": "cpu", "image": "w:1"}]})
    body = {"metadata": {"name": "jq", "namespace": "ns", "uid": "u"}, "apiVersion": "skiplock.dev/v1alpha1",
            "kind": "JobQueue"}
    deployments.append(resources.deployment(body, spec, spec.pools[0], 1))
    assert len(deployments) == 4  # the operator, the UI, the migration Job, a pool's workers
    for dep in deployments:
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                if env["name"] in ("DATABASE_URL", "SKIPLOCK_DATABASE_URL"):
                    assert "value" not in env and "secretKeyRef" in env["valueFrom"], (dep["metadata"]["name"], env)
