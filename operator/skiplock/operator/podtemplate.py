"""The worker pods of a pool: the pool's ``template`` (a PodTemplateSpec) merged with what the
operator owns, and the check that a template leaves the operator's fields alone.

The merge, in one line per field (docs/operator.md#the-pod-template has the same table):

- labels and annotations: the template's, plus the operator's (its labels, its Prometheus
  annotations); a template may not set the operator's keys.
- containers: by name, like a strategic merge patch. The container named ``worker`` is the worker:
  the operator builds it (image, command, args, imagePullPolicy, resources, securityContext from
  the pool's fields; its env, metrics port, probes' endpoints and /tmp mount) and merges the
  template's container of that name into it: the template adds env, envFrom, ports, volumeMounts
  and any other field, and may tune the probes' timing. Without one, the worker comes first. Every
  other container (sidecars, initContainers) is the template's as written.
- securityContext: the restricted Pod Security Standard where nothing is given; a given one
  (the pool's ``podSecurityContext``/``securityContext`` or the template's) keeps its fields and
  gets the standard's required ones where it leaves them unset (pod: runAsNonRoot, seccomp
  RuntimeDefault; every container: allowPrivilegeEscalation false, capabilities drop ALL).
- automountServiceAccountToken: false unless the template names a ServiceAccount or sets it.
- volumes: the operator's ``tmp`` emptyDir, then the template's.
- tolerations and nodeSelector: the template's plus a GPU pool's ``gpu`` ones.
- terminationGracePeriodSeconds: the pool's field only (the worker's drain time follows it).
- priorityClassName: the pool's field or the template's (one of them).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from .spec import Pool

WORKER = "worker"
METRICS_PORT = 9400
SCRATCH = {"name": "tmp", "mountPath": "/tmp"}  # the one writable directory of a read-only root
# The restricted Pod Security Standard, as the worker image (Dockerfile.worker, user 10001) allows.
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
# What the standard requires of a securityContext that is given: added where it is unset.
POD_REQUIRED: dict[str, Any] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_REQUIRED: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
PROMETHEUS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
# The environment the operator sets on the worker (the CRD refuses them in a pool's env too).
RESERVED_ENV = ("DATABASE_URL", "SKIPLOCK_DATABASE_URL", "SKIPLOCK_WORKER_ID", "SKIPLOCK_QUEUES", "SKIPLOCK_TYPES",
                "SKIPLOCK_CONCURRENCY", "SKIPLOCK_METRICS_PORT", "SKIPLOCK_LEASE_SECONDS", "SKIPLOCK_HANDLERS",
                "SKIPLOCK_SHUTDOWN_GRACE")
# Worker container fields that have a pool field of their own: set there, never in the template.
POOL_FIELDS = {"image": "image", "imagePullPolicy": "imagePullPolicy", "command": "command", "args": "args",
               "resources": "resources", "securityContext": "securityContext"}
PROBES = ("readinessProbe", "livenessProbe", "startupProbe")
PROBE_HANDLERS = ("httpGet", "tcpSocket", "exec", "grpc")
PROBE_PATHS = {"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": "/healthz"}


def _template(pool: Pool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template's metadata and pod spec (copies; empty when the pool has no template)."""
    tpl = pool.template
    if tpl is None:
        return {}, {}
    return tpl.metadata.model_dump(exclude_none=True), copy.deepcopy(tpl.spec)


def _user_worker(spec: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((c for c in spec.get("containers") or [] if c.get("name") == WORKER), None)


def conflicts(pool: Pool, operator_labels: Mapping[str, str]) -> list[str]:
    """What the pool's template sets that the operator owns, or that a pool field sets too: one
    ``path: reason`` each (empty when the template can be merged)."""
    meta, spec = _template(pool)
    here = f"spec.pools[{pool.name}]"
    tpl = f"{here}.template"
    found = [f"{tpl}.metadata.labels[{k}]: set by the operator" for k in meta.get("labels") or {}
             if k in operator_labels]
    found += [f"{tpl}.metadata.annotations[{k}]: set by the operator" for k in meta.get("annotations") or {}
              if k in PROMETHEUS or k == DELETION_COST]
    pod = f"{tpl}.spec"
    if "terminationGracePeriodSeconds" in spec:
        found.append(f"{pod}.terminationGracePeriodSeconds: set {here}.terminationGracePeriodSeconds "
                     "(the workers' drain time follows it)")
    both = (("priorityClassName", pool.priority_class_name, "priorityClassName"),
            ("podSecurityContext", pool.pod_security_context, "securityContext"))
    found += [f"{pod}.{theirs}: {here}.{mine} sets it too: give one of them"
              for mine, value, theirs in both if value is not None and theirs in spec]
    found += [f"{pod}.volumes[{v.get('name')}]: the operator's scratch volume for /tmp"
              for v in spec.get("volumes") or [] if v.get("name") == SCRATCH["name"]]
    if pool.gpu is not None:
        selector = spec.get("nodeSelector") or {}
        found += [f"{pod}.nodeSelector[{k}]: {here}.gpu.nodeSelector sets {k} to {v!r}"
                  for k, v in pool.gpu.node_selector.items() if k in selector and selector[k] != v]
    found += [f"{pod}.initContainers[{WORKER}]: the name of the operator's worker container"
              for c in spec.get("initContainers") or [] if c.get("name") == WORKER]
    worker = _user_worker(spec)
    if worker is not None:
        found += _worker_conflicts(pool, worker, f"{pod}.containers[{WORKER}]", here)
    return found


def _worker_conflicts(pool: Pool, worker: Mapping[str, Any], path: str, here: str) -> list[str]:
    found = [f"{path}.{f}: set {here}.{own}" for f, own in POOL_FIELDS.items() if f in worker]
    pool_env = {e.get("name") for e in pool.env}
    for env in worker.get("env") or []:
        name = env.get("name")
        if name in RESERVED_ENV:
            found.append(f"{path}.env[{name}]: set by the operator")
        elif name in pool_env:
            found.append(f"{path}.env[{name}]: {here}.env sets it too")
    for port in worker.get("ports") or []:
        if port.get("name") == "metrics" or port.get("containerPort") == METRICS_PORT:
            found.append(f"{path}.ports[{port.get('containerPort')}]: the operator's metrics port "
                         f"({METRICS_PORT}, named metrics)")
    found += [f"{path}.volumeMounts[{m.get('mountPath')}]: the operator's scratch directory"
              for m in worker.get("volumeMounts") or [] if m.get("mountPath") == SCRATCH["mountPath"]]
    for probe in PROBES:
        handlers = [h for h in PROBE_HANDLERS if h in (worker.get(probe) or {})]
        found += [f"{path}.{probe}.{h}: the operator sets the probe's endpoint; give only its timing"
                  for h in handlers]
    return found


def _secured(given: Mapping[str, Any] | None, default: Mapping[str, Any], required: Mapping[str, Any]
             ) -> dict[str, Any]:
    """``default`` when nothing is given, else ``given`` with the ``required`` fields it leaves unset."""
    if given is None:
        return copy.deepcopy(dict(default))
    return {**copy.deepcopy(dict(required)), **copy.deepcopy(dict(given))}


def _container_secured(given: Mapping[str, Any] | None, default: Mapping[str, Any]) -> dict[str, Any]:
    """A container's securityContext: as ``_secured``, but no ``allowPrivilegeEscalation: false``
    beside what the API server refuses it with (privileged, CAP_SYS_ADMIN: only a namespace that
    allows unrestricted pools gets this far with them)."""
    required = dict(CONTAINER_REQUIRED)
    added = {str(c).upper().removeprefix("CAP_") for c in ((given or {}).get("capabilities") or {}).get("add") or []}
    if (given or {}).get("privileged") is True or "SYS_ADMIN" in added:
        del required["allowPrivilegeEscalation"]
    return _secured(given, default, required)


def _restricted(containers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The template's own containers, each with the standard's required securityContext fields."""
    return [{**c, "securityContext": _container_secured(c.get("securityContext") or {}, {})} for c in containers]


def _probe(given: Mapping[str, Any] | None, path: str, defaults: Mapping[str, Any]) -> dict[str, Any]:
    timing = {k: v for k, v in (given or {}).items() if k not in PROBE_HANDLERS}
    return {"httpGet": {"path": path, "port": "metrics"}, **defaults, **timing}


def worker_container(pool: Pool, env: list[dict[str, Any]], user: Mapping[str, Any] | None) -> dict[str, Any]:
    """The worker container: the operator's fields over the template's container named worker."""
    user = copy.deepcopy(dict(user or {}))
    limits = {k: str(v) for k, v in pool.resources.limits.items()}
    if pool.gpu is not None:
        limits[pool.gpu.resource_name] = str(pool.gpu.count)
    requests = {k: str(v) for k, v in pool.resources.requests.items()}
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    probe = {"periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        **user,
        "name": WORKER,
        "image": pool.image,
        "env": env + list(user.get("env") or []) + [dict(e) for e in pool.env],
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}, *user.get("ports", [])],
        "readinessProbe": _probe(user.get("readinessProbe"), PROBE_PATHS["readinessProbe"], probe),
        "livenessProbe": _probe(user.get("livenessProbe"), PROBE_PATHS["livenessProbe"],
                                {**probe, "initialDelaySeconds": 10}),
        "resources": resources,
        "securityContext": _container_secured(pool.security_context, CONTAINER_SECURITY),
        "volumeMounts": [dict(SCRATCH), *user.get("volumeMounts", [])],
    }
    if "startupProbe" in user:
        container["startupProbe"] = _probe(user["startupProbe"], PROBE_PATHS["startupProbe"], {})
    optional = {"imagePullPolicy": pool.image_pull_policy, "command": pool.command, "args": pool.args}
    container.update({k: v for k, v in optional.items() if v is not None})
    return container


def pod_template(pool: Pool, labels: Mapping[str, str], env: list[dict[str, Any]]) -> dict[str, Any]:
    """The pool's pod template, merged (``conflicts`` must have found nothing)."""
    meta, spec = _template(pool)
    containers = list(spec.get("containers") or [])
    user = _user_worker(spec)
    worker = worker_container(pool, env, user)
    others = _restricted([c for c in containers if c.get("name") != WORKER])
    at = containers.index(user) if user is not None else 0
    pod: dict[str, Any] = {
        **spec,
        "containers": [*others[:at], worker, *others[at:]],
        "terminationGracePeriodSeconds": pool.termination_grace_period_seconds,
        "securityContext": _secured(pool.pod_security_context if pool.pod_security_context is not None
                                    else spec.get("securityContext"), POD_SECURITY, POD_REQUIRED),
        "volumes": [{"name": SCRATCH["name"], "emptyDir": {"sizeLimit": "1Gi"}}, *spec.get("volumes", [])],
    }
    if spec.get("initContainers"):
        pod["initContainers"] = _restricted(spec["initContainers"])
    if "automountServiceAccountToken" not in spec and not (spec.get("serviceAccountName")
                                                           or spec.get("serviceAccount")):
        pod["automountServiceAccountToken"] = False
    if pool.gpu is not None:
        tolerations = list(spec.get("tolerations") or [])
        pod["tolerations"] = tolerations + [t for t in pool.gpu.effective_tolerations() if t not in tolerations]
        if pool.gpu.node_selector:
            pod["nodeSelector"] = {**spec.get("nodeSelector", {}), **pool.gpu.node_selector}
    if pool.priority_class_name:
        pod["priorityClassName"] = pool.priority_class_name
    metadata = {"labels": {**meta.get("labels", {}), **labels},
                "annotations": {**meta.get("annotations", {}), **PROMETHEUS}}
    return {"metadata": metadata, "spec": pod}
