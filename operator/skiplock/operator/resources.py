"""The worker Deployment of one pool: names, labels and the manifest the operator keeps in place.

The operator owns ``spec.template``, ``spec.strategy`` and the labels; ``spec.replicas`` belongs to
the scaler. ``TEMPLATE_HASH`` on the Deployment records which manifest it carries, so an unchanged
spec causes no write and a changed one a single rolling update.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from .spec import GROUP, KIND, VERSION, JobQueueSpec, Pool

JOBQUEUE_LABEL = f"{GROUP}/jobqueue"
POOL_LABEL = f"{GROUP}/pool"
TEMPLATE_HASH = f"{GROUP}/template-hash"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
METRICS_PORT = 9400
CONTAINER = "worker"
# The restricted Pod Security Standard, as the worker image (Dockerfile.worker, user 10001) allows;
# a pool's podSecurityContext / securityContext replaces these.
POD_SECURITY: dict[str, Any] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY: dict[str, Any] = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                      "capabilities": {"drop": ["ALL"]}}
SCRATCH = {"name": "tmp", "mountPath": "/tmp"}  # the one writable directory of a read-only root


def deployment_name(jobqueue: str, pool: str) -> str:
    return f"{jobqueue}-{pool}"


def selector(jobqueue: str, pool: str | None = None) -> dict[str, str]:
    """The labels that select a JobQueue's workers (of one pool, when given)."""
    labels = {JOBQUEUE_LABEL: jobqueue}
    if pool is not None:
        labels[POOL_LABEL] = pool
    return labels


def label_selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def labels(jobqueue: str, pool: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "skiplock-worker",
        "app.kubernetes.io/instance": jobqueue,
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "skiplock-operator",
        **selector(jobqueue, pool),
    }


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the JobQueue the controller of what the operator creates, so deleting it deletes them."""
    meta = body["metadata"]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _env(spec: JobQueueSpec, pool: Pool) -> list[dict[str, Any]]:
    ref = spec.database.secret_ref
    env: list[dict[str, Any]] = [
        {"name": "DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}},
        {"name": "SKIPLOCK_WORKER_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "SKIPLOCK_QUEUES", "value": ",".join(spec.queues)},
        {"name": "SKIPLOCK_CONCURRENCY", "value": str(pool.concurrency)},
        {"name": "SKIPLOCK_METRICS_PORT", "value": str(METRICS_PORT)},
        {"name": "SKIPLOCK_LEASE_SECONDS", "value": str(spec.recovery.lease_seconds)},
        {"name": "SKIPLOCK_SHUTDOWN_GRACE", "value": str(pool.termination_grace_period_seconds - 5)},
    ]
    if pool.job_types:
        env.append({"name": "SKIPLOCK_TYPES", "value": ",".join(pool.job_types)})
    handlers = pool.handlers or spec.handlers
    if handlers:
        env.append({"name": "SKIPLOCK_HANDLERS", "value": handlers})
    return env + [dict(e) for e in pool.env]


def _container(spec: JobQueueSpec, pool: Pool) -> dict[str, Any]:
    limits = {k: str(v) for k, v in pool.resources.limits.items()}
    if pool.gpu is not None:
        limits[pool.gpu.resource_name] = str(pool.gpu.count)
    requests = {k: str(v) for k, v in pool.resources.requests.items()}
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    probe = {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 10, "failureThreshold": 3}
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": pool.image,
        "env": _env(spec, pool),
        "ports": [{"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "httpGet": {"path": "/healthz", "port": "metrics"},
                          "initialDelaySeconds": 10},
        "resources": resources,
        "securityContext": pool.security_context if pool.security_context is not None else CONTAINER_SECURITY,
        "volumeMounts": [SCRATCH],
    }
    optional = {"imagePullPolicy": pool.image_pull_policy, "command": pool.command, "args": pool.args}
    container.update({k: v for k, v in optional.items() if v is not None})
    return container


def pod_template(jobqueue: str, spec: JobQueueSpec, pool: Pool) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "containers": [_container(spec, pool)],
        "terminationGracePeriodSeconds": pool.termination_grace_period_seconds,
        "securityContext": pool.pod_security_context if pool.pod_security_context is not None else POD_SECURITY,
        "volumes": [{"name": SCRATCH["name"], "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    if pool.gpu is not None:
        pod["tolerations"] = pool.gpu.effective_tolerations()
        if pool.gpu.node_selector:
            pod["nodeSelector"] = dict(pool.gpu.node_selector)
    if pool.priority_class_name:
        pod["priorityClassName"] = pool.priority_class_name
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
    return {"metadata": {"labels": labels(jobqueue, pool.name), "annotations": annotations}, "spec": pod}


def strategy(pool: Pool) -> dict[str, Any]:
    """Rolling updates: a surge pod first, except for GPU pools, where a surge pod would wait for a
    GPU the old pods hold; those replace one pod at a time."""
    if pool.gpu is not None:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def template_hash(template: dict[str, Any], strategy_: dict[str, Any]) -> str:
    text = json.dumps([template, strategy_], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def deployment(body: Mapping[str, Any], spec: JobQueueSpec, pool: Pool, replicas: int) -> dict[str, Any]:
    """The whole Deployment of ``pool``, as created."""
    name = body["metadata"]["name"]
    template, strat = pod_template(name, spec, pool), strategy(pool)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name, pool.name),
            "namespace": body["metadata"]["namespace"],
            "labels": labels(name, pool.name),
            "annotations": {TEMPLATE_HASH: template_hash(template, strat)},
            "ownerReferences": [owner_reference(body)],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(name, pool.name)},
            "template": template,
            "strategy": strat,
            "revisionHistoryLimit": 3,
        },
    }


def update_patch(desired: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch that makes an existing Deployment carry ``desired``'s template, strategy, labels
    and hash, leaving its replicas alone (``replace`` drops fields the new template no longer has)."""
    meta, spec = desired["metadata"], desired["spec"]
    return [
        {"op": "replace", "path": "/metadata/labels", "value": meta["labels"]},
        {"op": "add", "path": "/metadata/annotations/" + TEMPLATE_HASH.replace("/", "~1"),
         "value": meta["annotations"][TEMPLATE_HASH]},
        {"op": "replace", "path": "/spec/template", "value": spec["template"]},
        {"op": "replace", "path": "/spec/strategy", "value": spec["strategy"]},
    ]


def replicas_patch(replicas: int) -> list[dict[str, Any]]:
    return [{"op": "replace", "path": "/spec/replicas", "value": replicas}]
