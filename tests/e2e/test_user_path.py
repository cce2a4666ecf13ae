"""The user's path on real pods: ``helm install`` -> ``kubectl apply`` a JobQueue -> a burst of jobs
-> the operator scales the pool -> real worker pods run every job -> back to zero; then the faults
(a pod deleted mid-job, a container killed hard, a rolling image update during a drain, a pod cut
off its database), the kubelet's probes, and the UI through its Service.

The operator runs in-cluster, from the operator image, with its ServiceAccount: it reaches the API
server through the ClusterIP of ``kubernetes.default`` (see tests/k8s/node.py). Worker pods run the
test worker image (tests/e2e/image), built FROM the worker image as docs/install.md says. The tests
run in order and share the release; each starts from an empty queue and a pool at zero or draining.
"""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e import audit as db
from tests.e2e.stack import FIGURES, REAL_NODE, Stack, pinned_namespace
from tests.k8s.cluster import Cluster
from tests.ship.stack import wait_until
from tests.ship.tools import CHART, need, run

pytestmark = pytest.mark.timeout(900)

SYSTEM, APPS, RELEASE = "skiplock-system", "apps", "sk"
JOBQUEUE, POOL = "e2e", "cpu"
DEPLOYMENT = f"{JOBQUEUE}-{POOL}"
WORKERS = f"skiplock.dev/jobqueue={JOBQUEUE},skiplock.dev/pool={POOL}"
OPERATOR = "app.kubernetes.io/component=operator"
MIGRATION = f"{RELEASE}-skiplock-migration"  # the hook Job's name
LEASE_SECONDS = 6
_INSECURE = ssl._create_unverified_context()


# -- helpers ---------------------------------------------------------------------------------------

def get(cluster: Cluster, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return found


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = get(cluster, "pods", "-n", namespace, "-l", selector)["items"]
    return items


def running(pod: dict[str, Any]) -> bool:
    return pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp")


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def events(cluster: Cluster, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    items: list[dict[str, Any]] = get(cluster, "events", "-n", namespace, "--field-selector", selector)["items"]
    return items


def jobqueue(image: str) -> dict[str, Any]:
    """The JobQueue the tests apply: one CPU pool of at most 3 pods x 4 jobs, quick to scale and to rescue."""
    pool = {"name": POOL, "image": image, "imagePullPolicy": "Never", "concurrency": 4, "maxReplicas": 3,
            "terminationGracePeriodSeconds": 30,
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
            "env": [{"name": "SKIPLOCK_RECOVERY_INTERVAL", "value": "1"}]}
    return {"apiVersion": "skiplock.dev/v1alpha1", "kind": "JobQueue",
            "metadata": {"name": JOBQUEUE, "namespace": APPS},
            "spec": {"database": {"secretRef": {"name": "e2e-database"}}, "queues": [db.QUEUE], "pools": [pool],
                     "scaling": {"pollIntervalSeconds": 1, "scaleDownStabilizationSeconds": 5,
                                 "scaleToZeroAfterSeconds": 5},
                     "recovery": {"leaseSeconds": LEASE_SECONDS, "intervalSeconds": 2}}}


@dataclass
class Release:
    stack: Stack
    dsn: str
    helm: list[str]  # helm with the cluster's kubeconfig

    @property
    def cluster(self) -> Cluster:
        return self.stack.cluster

    def workers(self) -> list[dict[str, Any]]:
        return pods(self.cluster, APPS, WORKERS)

    def deployment(self) -> dict[str, Any]:
        return get(self.cluster, "deployment", "-n", APPS, DEPLOYMENT)

    def state(self) -> str:
        """What the pool looks like now, for failure messages."""
        status = get(self.cluster, "jobqueue", "-n", APPS, JOBQUEUE).get("status", {})
        pods_now = [(p["metadata"]["name"], p["status"].get("phase"), p["spec"].get("nodeName"))
                    for p in self.workers()]
        logs = self.cluster.kubectl("-n", SYSTEM, "logs", "deployment/sk-skiplock-operator", "--tail=30",
                                    check=False)
        return f"status={json.dumps(status)[:600]} pods={pods_now}\noperator log:\n{logs.stdout}{logs.stderr}"

    def wait_done(self, ids: list[int], timeout: float = 240) -> float:
        """Wait until every job completed; returns when (monotonic)."""
        wait_until(lambda: db.all_completed(self.dsn, ids), timeout, f"{len(ids)} jobs completed", every=0.5,
                   state=lambda: (db.states(self.dsn, ids), self.state()))
        return time.monotonic()

    def wait_pool_idle(self, timeout: float = 120) -> None:
        """Pool at zero replicas and its pods gone."""
        wait_until(lambda: self.deployment()["spec"]["replicas"] == 0 and not self.workers(), timeout,
                   "the pool back at zero, its pods gone", every=0.5, state=self.state)

    def busy_pod(self, ids: list[int], at_least: int = 1, timeout: float = 120) -> tuple[str, list[db.Run]]:
        """A worker pod running ``at_least`` of ``ids`` right now, and those runs."""
        def probe() -> tuple[str, list[db.Run]] | None:
            by_pod: dict[str, list[db.Run]] = {}
            for r in db.unfinished(self.dsn, ids):
                by_pod.setdefault(r.pod, []).append(r)
            busiest = max(by_pod.items(), key=lambda kv: len(kv[1]), default=None)
            return busiest if busiest and len(busiest[1]) >= at_least else None

        return wait_until(probe, timeout, f"a worker pod running {at_least} jobs", every=0.2, state=self.state)


@pytest.fixture(scope="module")
def release(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Release]:
    """``helm install`` of the chart with the images of this run, then the JobQueue with ``kubectl apply``."""
    cluster = stack.cluster
    for namespace in (SYSTEM, APPS):
        pinned_namespace(cluster, namespace)
    db.sql(stack.postgres.uri, "CREATE DATABASE e2e")
    dsn = stack.dsn.rsplit("/", 1)[0] + "/e2e"  # empty: the install creates the schema
    images = stack.images
    def image(name: str, **policy: str) -> dict[str, str]:  # localhost/skiplock-x:1.2.3 as the chart spells it
        registry, repository = name.rsplit(":", 1)[0].split("/", 1)
        return {"registry": registry, "repository": repository, "tag": images.version, **policy}

    values = {
        "operator": {"image": image(images.operator, pullPolicy="Never")},
        "ui": {"image": image(images.worker, pullPolicy="Never")},
        "worker": {"image": image(images.worker)},  # the migration hook Job's image too
        "database": {"url": dsn},
    }
    path = tmp_path_factory.mktemp("helm") / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    helm = [need("helm"), "--kubeconfig", str(cluster.kubeconfig)]
    start = time.monotonic()
    install = run([*helm, "install", RELEASE, str(CHART), "--namespace", SYSTEM, "-f", str(path), "--wait",
                   "--timeout", "240s"], timeout=300, check=False)
    seen = cluster.kubectl("-n", SYSTEM, "get", "pods,events", check=False).stdout
    assert install.returncode == 0, f"{install.stdout}{install.stderr}\n{seen}"
    FIGURES["helm install --wait (schema migrated, operator pod Ready)"] = f"{time.monotonic() - start:.0f} s"
    assert "STATUS: deployed" in install.stdout, install.stdout
    db.sql(dsn, db.RUNS_TABLE)  # the handlers' record of their runs, beside the schema the install made
    cluster.kubectl("-n", APPS, "create", "secret", "generic", "e2e-database", f"--from-literal=DATABASE_URL={dsn}")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(jobqueue(images.e2e["a"])))
    yield Release(stack, dsn, helm)
    # Nothing to uninstall: the whole stack goes, and the node drains its pods first.


# -- the path ----------------------------------------------------------------------------------------

def test_install_runs_the_operator_in_cluster_on_the_real_node(release: Release) -> None:
    cluster = release.cluster
    (pod,) = [p for p in pods(cluster, SYSTEM, OPERATOR) if running(p)]
    assert pod["spec"]["nodeName"] == REAL_NODE and ready(pod), pod["status"]
    (status,) = pod["status"]["containerStatuses"]
    assert status["image"].endswith(release.stack.images.operator.split("/", 1)[1]), status
    assert status["restartCount"] == 0, status
    # The operator reconciles with its ServiceAccount through kubernetes.default: the JobQueue is Ready
    # and its pool's Deployment exists (at zero replicas, nothing queued yet).
    def reconciled() -> bool:
        conditions = get(cluster, "jobqueue", "-n", APPS, JOBQUEUE).get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    wait_until(reconciled, 120, "the JobQueue Ready", state=release.state)
    assert release.deployment()["spec"]["replicas"] == 0
    # kubectl logs reaches the kubelet (--kubelet-preferred-address-types=InternalIP).
    logs = cluster.kubectl("-n", SYSTEM, "logs", pod["metadata"]["name"]).stdout
    assert f"leading as {pod['metadata']['name']}" in logs, logs[-2000:]
    reasons = {e["reason"] for e in events(cluster, APPS, "JobQueue", JOBQUEUE)}
    assert "DeploymentCreated" in reasons, reasons


def test_install_migrated_the_schema_with_its_hook_job_on_the_real_node(release: Release) -> None:
    """The pre-install hook Job ran `skiplock migrate` from the worker image, on the real node (the Job
    is deleted once it succeeded; its pod's events stay)."""
    assert db.sql(release.dsn, "SELECT to_regclass('skiplock.jobs') IS NOT NULL")[0][0]
    scheduled = [e["message"] for e in get(release.cluster, "events", "-n", SYSTEM)["items"]
                 if e["reason"] == "Scheduled" and e["involvedObject"]["name"].startswith(MIGRATION)]
    assert scheduled and all(m.endswith(f"to {REAL_NODE}") for m in scheduled), scheduled


def test_burst_scales_up_runs_every_job_and_returns_to_zero(release: Release) -> None:
    cluster, dsn = release.cluster, release.dsn
    release.wait_pool_idle()
    burst = time.monotonic()
    ids = db.enqueue(dsn, 48, seconds=1.0)
    seen: set[str] = set()

    def first_running() -> float | None:
        workers = release.workers()
        seen.update(p["metadata"]["name"] for p in workers)
        return time.monotonic() if any(running(p) for p in workers) else None

    first = wait_until(first_running, 180, "a worker pod Running", every=0.2, state=release.state)
    def all_done() -> float | None:
        seen.update(p["metadata"]["name"] for p in release.workers())
        return time.monotonic() if db.all_completed(dsn, ids) else None

    done = wait_until(all_done, 240, "every job completed", every=0.5, state=release.state)
    FIGURES["burst of 48 x 1 s jobs -> first worker pod Running"] = f"{first - burst:.1f} s"
    FIGURES["burst -> queue empty (every job completed)"] = f"{done - burst:.1f} s"
    release.wait_pool_idle()
    FIGURES["burst -> pool back at zero, pods gone"] = f"{time.monotonic() - burst:.1f} s"

    result = db.audit(dsn, ids)
    FIGURES["burst: audit"] = result.summary()
    assert not result.lost and not result.reruns, result
    ran_on = {r.pod for r in db.runs(dsn, ids)}
    assert len(ran_on) >= 2 and ran_on <= seen, (ran_on, seen)  # real pods of the pool ran them, several
    # The JobQueue tells the story: scaled up, scaled down; nothing pending, no replicas.
    reasons = [e["reason"] for e in events(cluster, APPS, "JobQueue", JOBQUEUE)]
    assert {"ScaledUp", "ScaledDown"} <= set(reasons), reasons
    def told() -> bool:
        status = get(cluster, "jobqueue", "-n", APPS, JOBQUEUE)["status"]
        (pool,) = status["pools"]
        return bool(status["pending"] == 0 and status["running"] == 0 and status["replicas"] == f"{POOL}=0/0"
                    and pool["currentReplicas"] == 0)

    wait_until(told, 30, "the JobQueue's status: nothing pending, no pods", state=release.state)


def test_pod_deleted_mid_job_finishes_its_jobs_within_the_grace(release: Release) -> None:
    cluster, dsn = release.cluster, release.dsn
    ids = db.enqueue(dsn, 24, seconds=4.0)
    victim, _ = release.busy_pod(ids, at_least=2)
    deleted = db.now(dsn)
    cluster.kubectl("-n", APPS, "delete", "pod", victim, "--wait=false")
    release.wait_done(ids)
    wait_until(lambda: victim not in {p["metadata"]["name"] for p in release.workers()}, 60, f"{victim} gone")

    running = db.in_flight(dsn, ids, victim, deleted)
    result = db.audit(dsn, ids)
    FIGURES["pod deleted mid-job: audit"] = result.summary() + f" ({len(running)} in flight at deletion)"
    assert running, "the pod was running jobs when it was deleted"
    assert not result.lost and not result.reruns, result
    # Grace honoured: what the pod was running when it was deleted, it finished itself, after SIGTERM.
    assert all(r.ended_at and r.ended_at > deleted for r in running), running


def test_container_killed_hard_has_its_jobs_rescued(release: Release) -> None:
    dsn = release.dsn
    ids = db.enqueue(dsn, 24, seconds=4.0)
    victim, _ = release.busy_pod(ids, at_least=2)
    (pod,) = [p for p in release.workers() if p["metadata"]["name"] == victim]
    (container,) = pod["status"]["containerStatuses"]
    killed = db.now(dsn)
    release.stack.node.kill_container(container["containerID"])  # SIGKILL, as the OOM killer would

    def restarted() -> dict[str, Any] | None:  # the kubelet restarts the container in the same pod
        statuses = [p["status"]["containerStatuses"][0] for p in release.workers()
                    if p["metadata"]["name"] == victim]
        return next((s for s in statuses if s["restartCount"] >= 1), None)

    status = wait_until(restarted, 60, f"{victim}'s container restarted", state=release.state)
    assert status["lastState"]["terminated"]["exitCode"] == 137, status  # 128 + SIGKILL
    release.wait_done(ids)

    def died_running_it(r: db.Run) -> bool:
        return r.pod == victim and r.started_at <= killed

    running = [r for r in db.in_flight(dsn, ids, victim, killed) if r.ended_at is None]
    result = db.audit(dsn, ids, excused=died_running_it)
    FIGURES["container killed hard: audit"] = result.summary() + f" ({len(running)} in flight at the kill)"
    assert running, "the container was running jobs when it was killed"
    assert not result.lost and not result.duplicated, result
    assert {r.job_id for r in running} <= set(result.reruns), "the interrupted jobs ran again"


def test_rolling_image_update_during_a_drain_loses_nothing(release: Release) -> None:
    cluster, dsn = release.cluster, release.dsn
    images = release.stack.images
    ids = db.enqueue(dsn, 90, seconds=3.0)
    release.busy_pod(ids, at_least=4)
    rolled = db.now(dsn)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(jobqueue(images.e2e["b"])))
    release.wait_done(ids)
    deployment = release.deployment()
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == images.e2e["b"]

    all_runs = db.runs(dsn, ids)
    result = db.audit(dsn, ids)
    FIGURES["rolling image update during a drain: audit"] = result.summary()
    assert not result.lost and not result.reruns, result
    revisions = {r.revision for r in all_runs}
    assert revisions == {"a", "b"}, f"old pods drained, new pods took over: {revisions}"
    assert all(r.revision == "b" for r in all_runs if r.started_at > rolled and r.pod not in
               {o.pod for o in all_runs if o.revision == "a"})
    reasons = {e["reason"] for e in events(cluster, APPS, "JobQueue", JOBQUEUE)}
    assert "DeploymentUpdated" in reasons, reasons


def kubelet_probe_counts(release: Release, pod: str) -> dict[str, float]:
    """``prober_probe_total`` of the worker container of ``pod`` from the kubelet, by probe type and result."""
    node = release.stack.node
    url = f"https://{release.stack.network.gateway}:{node.kubelet_port}/metrics/probes"
    with urllib.request.urlopen(url, timeout=10, context=_INSECURE) as resp:
        text = resp.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prober_probe_total{") and f'pod="{pod}"' in line and 'container="worker"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            key = f"{labels['probe_type']}/{labels['result']}"
            counts[key] = counts.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return counts


def test_kubelet_probes_hit_healthz_and_readyz(release: Release) -> None:
    """The kubelet's liveness and readiness probes succeed on a working pod; cut off from PostgreSQL,
    its /readyz answers 503 to the kubelet; reconnected, it carries on. The pool is held at one pod
    meanwhile, so that the test watches the same pod throughout."""
    cluster, dsn, network = release.cluster, release.dsn, release.stack.network
    cluster.kubectl("-n", APPS, "patch", "jobqueue", JOBQUEUE, "--type=json", "-p",
                    json.dumps([{"op": "replace", "path": "/spec/pools/0/maxReplicas", "value": 1}]))
    release.wait_pool_idle()  # a fresh pod: its probes from the start, no other pod to confuse them
    ids = db.enqueue(dsn, 48, seconds=2.0)
    victim, _ = release.busy_pod(ids)
    (pod,) = [p for p in release.workers() if p["metadata"]["name"] == victim]
    ip, port = pod["status"]["podIP"], str(release.stack.postgres.port)

    def probed(*kinds: str) -> bool:
        return {f"{k}/successful" for k in kinds} <= set(kubelet_probe_counts(release, victim))

    def told_503() -> bool:
        return any(e["reason"] == "Unhealthy" and "Readiness probe failed" in e["message"] and "503" in e["message"]
                   for e in events(cluster, APPS, "Pod", victim))

    wait_until(lambda: probed("Readiness"), 60, "a successful readiness probe", every=1,
               state=lambda: kubelet_probe_counts(release, victim))
    cut = db.now(dsn)
    with network.rule("filter", "INPUT", "-s", ip, "-p", "tcp", "--dport", port, "-j", "REJECT"):
        wait_until(told_503, 90, f"the kubelet's readiness probe of {victim} answered 503", every=0.5,
                   state=release.state)
    # Liveness probes start 10 s after the container: by now the pod has lived longer than that.
    wait_until(lambda: probed("Liveness", "Readiness"), 60, "successful liveness and readiness probes again",
               every=1, state=lambda: kubelet_probe_counts(release, victim))
    release.wait_done(ids)
    cluster.kubectl("-n", APPS, "patch", "jobqueue", JOBQUEUE, "--type=json", "-p",
                    json.dumps([{"op": "replace", "path": "/spec/pools/0/maxReplicas", "value": 3}]))

    def cut_off_running_it(r: db.Run) -> bool:  # its lease ran out while it could not reach the database
        return r.pod == victim and r.started_at <= cut

    result = db.audit(dsn, ids, excused=cut_off_running_it)
    FIGURES["pod cut off its database: audit"] = result.summary()
    assert not result.lost and not result.duplicated, result


def test_ui_through_its_service(release: Release, tmp_path: Path) -> None:
    """``helm upgrade --set ui.enabled=true``: the UI pod runs `skiplock ui` from the worker image on the
    real node, and serves the job browser through ``kubectl port-forward service/...`` (as NOTES.txt says)."""
    cluster = release.cluster
    upgrade = run([*release.helm, "upgrade", RELEASE, str(CHART), "--namespace", SYSTEM, "--reuse-values",
                   "--set", "ui.enabled=true", "--wait", "--timeout", "120s"], timeout=180, check=False)
    if upgrade.returncode:
        logs = cluster.kubectl("-n", SYSTEM, "logs", f"deployment/{RELEASE}-skiplock-ui", "--tail=20", check=False)
        raise AssertionError(f"helm upgrade: {upgrade.stderr}\nthe UI pod's log:\n{logs.stdout}{logs.stderr}")
    (pod,) = [p for p in pods(cluster, SYSTEM, "app.kubernetes.io/component=ui") if running(p)]
    assert pod["spec"]["nodeName"] == REAL_NODE and ready(pod)
    token = cluster.kubectl("-n", SYSTEM, "get", "secret", f"{RELEASE}-skiplock-ui", "-o",
                            "jsonpath={.data.token}").stdout
    import base64

    token = base64.b64decode(token).decode()
    argv = [str(cluster.bin_dir / "kubectl"), "--kubeconfig", str(cluster.kubeconfig), "-n", SYSTEM,
            "port-forward", f"service/{RELEASE}-skiplock-ui", ":80"]
    forward = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert forward.stdout is not None
        line = forward.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, line
        url = f"http://127.0.0.1:{match.group(1)}"
        req = urllib.request.Request(f"{url}/", headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            page = resp.read().decode()
            assert resp.status == 200
        assert db.QUEUE in page, page[:2000]
        _chromium_login(url, token, tmp_path)
    finally:
        forward.terminate()
        forward.wait(10)


def _chromium_login(url: str, token: str, tmp_path: Path) -> None:
    """Debian's Chromium (Playwright) logs in with the token and sees the queue's completed jobs."""
    from playwright.sync_api import sync_playwright

    from tests.ui.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{url}/jobs?queue={db.QUEUE}&state=completed")
            page.fill("input[name=token]", token)
            page.keyboard.press("Enter")
            page.wait_for_selector("table", timeout=30_000)
            page.screenshot(path=str(tmp_path / "ui-jobs.png"), full_page=True)
            assert "work" in page.content()
        finally:
            browser.close()
