"""An in-memory stand-in for the few Kubernetes API calls of ``skiplock.operator.kube.Kube``, for
unit tests of the handlers' logic (the real API server is exercised in tests/k8s). The database is
never faked: these tests use the real PostgreSQL fixtures."""

from __future__ import annotations

import base64
import copy
import itertools
from typing import Any

from skiplock.operator.kube import KubeError


def _apply(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [p.replace("~1", "/") for p in op["path"].strip("/").split("/")]
        target = doc
        for part in parents:
            target = target[part]
        assert op["op"] in ("add", "replace")
        target[last] = copy.deepcopy(op["value"])


class FakeKube:
    """Secrets, Deployments, Pods, JobQueue statuses and Leases, by (namespace, name)."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        self.deploys: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, str]] = {}  # name: labels
        self.forbidden: set[str] = set()  # calls answered 403 (e.g. "namespace")
        self.invalid: dict[str, str] = {}  # Deployment name: why a create or patch of it is answered 422
        self.calls: list[tuple[str, str]] = []
        self.down = False  # every call fails as if the API server were unreachable
        self._versions = itertools.count(1)

    def _check(self, call: str, name: str) -> None:
        self.calls.append((call, name))
        if self.down:
            raise KubeError(0, "ConnectionRefusedError: the API server is down")
        if call in self.forbidden:
            raise KubeError(403, f'{call} "{name}" is forbidden')

    def add_secret(self, namespace: str, name: str, key: str, value: str) -> None:
        self.secrets[(namespace, name)] = {key: base64.b64encode(value.encode()).decode()}

    async def secret_value(self, namespace: str, name: str, key: str) -> str:
        self._check("secret", name)
        data = self.secrets.get((namespace, name))
        if data is None:
            raise KubeError(404, f'secrets "{name}" not found')
        if key not in data:
            raise KubeError(404, f'Secret "{name}" has no key "{key}"')
        return base64.b64decode(data[key]).decode()

    async def namespace_labels(self, name: str) -> dict[str, str]:
        self._check("namespace", name)
        if name not in self.namespaces:
            raise KubeError(404, f'namespaces "{name}" not found')
        return dict(self.namespaces[name])

    async def deployments(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self._check("list-deployments", label_selector)
        wanted = dict(kv.split("=", 1) for kv in label_selector.split(","))
        return [copy.deepcopy(d) for (ns, _), d in sorted(self.deploys.items())
                if ns == namespace and wanted.items() <= (d["metadata"].get("labels") or {}).items()]

    async def create_deployment(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        self._check("create-deployment", name)
        if name in self.invalid:
            raise KubeError(422, f'Deployment.apps "{name}" is invalid: {self.invalid[name]}')
        if (namespace, name) in self.deploys:
            raise KubeError(409, f'deployments.apps "{name}" already exists')
        self.deploys[(namespace, name)] = copy.deepcopy(body)
        return body

    async def patch_deployment(self, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self._check("patch-deployment", name)
        if (namespace, name) not in self.deploys:
            raise KubeError(404, f'deployments.apps "{name}" not found')
        _apply(self.deploys[(namespace, name)], ops)
        return self.deploys[(namespace, name)]

    async def delete_deployment(self, namespace: str, name: str) -> None:
        self._check("delete-deployment", name)
        if self.deploys.pop((namespace, name), None) is None:
            raise KubeError(404, f'deployments.apps "{name}" not found')

    async def pod_exists(self, namespace: str, name: str) -> bool:
        self._check("get-pod", name)
        return (namespace, name) in self.pods

    async def annotate_pod(self, namespace: str, name: str, annotations: dict[str, str]) -> None:
        self._check("annotate-pod", name)
        if (namespace, name) not in self.pods:
            raise KubeError(404, f'pods "{name}" not found')
        self.pods[(namespace, name)]["metadata"].setdefault("annotations", {}).update(annotations)

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._check("patch-status", name)
        self.statuses.setdefault((namespace, name), {}).update(copy.deepcopy(status))

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._check("read-lease", name)
        lease = self.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease else None

    async def create_lease(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check("create-lease", body["metadata"]["name"])
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            raise KubeError(409, "already exists")
        return self._store_lease(key, body)

    async def replace_lease(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self._check("replace-lease", name)
        current = self.leases.get((namespace, name))
        if current is None:
            raise KubeError(404, "not found")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified")
        return self._store_lease((namespace, name), body)

    def _store_lease(self, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(next(self._versions))
        self.leases[key] = stored
        return copy.deepcopy(stored)

    # -- helpers for tests: what the Deployment controller and kubelet would do ------------------

    def add_pod(self, namespace: str, name: str, jobqueue: str, pool: str, *, ready: bool = True,
                unschedulable: str = "") -> dict[str, Any]:
        conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                       "message": unschedulable}] if unschedulable else [
            {"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": str(ready)}]
        pod = {"metadata": {"name": name, "namespace": namespace, "annotations": {},
                            "labels": {"skiplock.dev/jobqueue": jobqueue, "skiplock.dev/pool": pool}},
               "status": {"phase": "Pending" if unschedulable else "Running", "conditions": conditions}}
        self.pods[(namespace, name)] = pod
        return pod

    def close(self) -> None:
        return None
