"""The worker Deployment of one pool: names, labels and the manifest the operator keeps in place.

The operator owns ``spec.template`` (the pool's template merged with the operator's fields, see
``podtemplate``), ``spec.strategy`` and the labels; ``spec.replicas`` belongs to the scaler.
``TEMPLATE_HASH`` on the Deployment records which manifest it carries, so an unchanged spec causes
no write and a changed one a single rolling update.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from . import podtemplate
from .spec import GROUP, KIND, VERSION, JobQueueSpec, Pool

JOBQUEUE_LABEL = f"{GROUP}/jobqueue"
POOL_LABEL = f"{GROUP}/pool"
TEMPLATE_HASH = f"{GROUP}/template-hash"
DELETION_COST = podtemplate.DELETION_COST


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
        {"name": "SKIPLOCK_METRICS_PORT", "value": str(podtemplate.METRICS_PORT)},
        {"name": "SKIPLOCK_LEASE_SECONDS", "value": str(spec.recovery.lease_seconds)},
        {"name": "SKIPLOCK_SHUTDOWN_GRACE", "value": str(pool.termination_grace_period_seconds - 5)},
    ]
    if ref.listen_key:  # DATABASE_URL is a transaction pooler: LISTEN on the direct URL of this key
        env.append({"name": "SKIPLOCK_LISTEN_DATABASE_URL",
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.listen_key}}})
    if pool.job_types:
        env.append({"name": "SKIPLOCK_TYPES", "value": ",".join(pool.job_types)})
    handlers = pool.handlers or spec.handlers
    if handlers:
        env.append({"name": "SKIPLOCK_HANDLERS", "value": handlers})
    return env


def pod_template(jobqueue: str, spec: JobQueueSpec, pool: Pool) -> dict[str, Any]:
    """The pool's pod template: its own template merged with the operator's fields."""
    return podtemplate.pod_template(pool, labels(jobqueue, pool.name), _env(spec, pool))


def conflicts(jobqueue: str, pool: Pool) -> list[str]:
    """What the pool's template sets that the operator owns (``podtemplate.conflicts``)."""
    return podtemplate.conflicts(pool, labels(jobqueue, pool.name))


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
