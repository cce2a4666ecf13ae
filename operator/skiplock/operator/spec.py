"""The JobQueue custom resource as typed models (``skiplock.dev/v1alpha1``).

The CRD's OpenAPI schema (charts/skiplock/files/crds/jobqueues.skiplock.dev.yaml) is what the API server
enforces; these models read what it admitted, with the same defaults (a unit test keeps the two
in step). Unknown fields are ignored, so a newer CRD does not break an older operator.

What the schema cannot check (a cron expression's fields, a time zone's name, a duration's value)
is left to ``skiplock.operator.schedules``, which reports each bad schedule on its own instead of
refusing the whole spec.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from skiplock.models import describe

from . import policy

GROUP = "skiplock.dev"
VERSION = "v1alpha1"
PLURAL = "jobqueues"
KIND = "JobQueue"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)


class SecretRef(_Model):
    name: str = Field(min_length=1)
    key: str = "DATABASE_URL"
    listen_key: str | None = Field(default=None, min_length=1)  # a direct DSN for LISTEN (behind a pooler)


class Database(_Model):
    secret_ref: SecretRef


class ScalingOverride(_Model):
    """A pool's ``scaling``: each field set here replaces the JobQueue-wide one."""

    poll_interval_seconds: int | None = Field(default=None, ge=1)
    target_jobs_per_pod: int | None = Field(default=None, ge=1)
    scale_down_stabilization_seconds: int | None = Field(default=None, ge=0)
    scale_to_zero_after_seconds: int | None = Field(default=None, ge=0)
    max_pending_age_seconds: int | None = Field(default=None, ge=1)
    headroom: float | None = Field(default=None, ge=0, le=10)
    paused: bool | None = None


class Scaling(ScalingOverride):
    """``spec.scaling``: the JobQueue-wide scaling settings."""

    poll_interval_seconds: int = Field(default=10, ge=1)
    scale_down_stabilization_seconds: int = Field(default=120, ge=0)
    scale_to_zero_after_seconds: int = Field(default=300, ge=0)
    paused: bool = False


class Recovery(_Model):
    lease_seconds: int = Field(default=30, ge=1)
    interval_seconds: int = Field(default=30, ge=1)


class Gpu(_Model):
    count: int = Field(default=1, ge=1)
    resource_name: str = DEFAULT_GPU_RESOURCE
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] | None = None
    max_pending: int = Field(default=1, ge=1)  # capacity probing: pods waiting for a GPU at most
    max_pending_age_seconds: int = Field(default=300, ge=1)  # unschedulable this long: scaled back

    def effective_tolerations(self) -> list[dict[str, Any]]:
        """The tolerations given, else one for the NoSchedule taint keyed by the GPU resource."""
        if self.tolerations is not None:
            return list(self.tolerations)
        return [{"key": self.resource_name, "operator": "Exists", "effect": "NoSchedule"}]


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class TemplateMetadata(_Model):
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class PodTemplate(_Model):
    """A pool's ``template``: a PodTemplateSpec, checked by the API server against the upstream
    schema (tools/podtemplate_schema.py); the pod spec is kept as the API server admitted it and
    merged by ``skiplock.operator.podtemplate``."""

    metadata: TemplateMetadata = Field(default_factory=TemplateMetadata)
    spec: dict[str, Any] = Field(default_factory=dict)


class Pool(_Model):
    name: str = Field(min_length=1, max_length=20)
    job_types: list[str] = Field(default_factory=list)
    image: str = Field(min_length=1)
    image_pull_policy: str | None = None
    command: list[str] | None = None
    args: list[str] | None = None
    handlers: str | None = None
    concurrency: int = Field(default=10, ge=1)
    min_replicas: int = Field(default=0, ge=0)
    max_replicas: int = Field(default=10, ge=0)
    resources: Resources = Field(default_factory=Resources)
    env: list[dict[str, Any]] = Field(default_factory=list)
    gpu: Gpu | None = None
    priority_class_name: str | None = None
    pod_security_context: dict[str, Any] | None = None
    security_context: dict[str, Any] | None = None
    termination_grace_period_seconds: int = Field(default=60, ge=5)
    template: PodTemplate | None = None
    scaling: ScalingOverride = Field(default_factory=ScalingOverride)


class Schedule(_Model):
    """One of ``spec.schedules``: a periodic job kept in the database by the operator, with the
    options of ``skiplock schedule add`` (``every`` is a duration: ``30s``, ``5m``, ``1h30m``, or
    seconds). Read as the API server admitted it; ``schedules.core_spec`` checks the rest."""

    name: str = Field(min_length=1)
    cron: str | None = None
    every: int | str | None = None
    type: str = Field(min_length=1)
    payload: Any = Field(default_factory=dict)
    queue: str | None = None  # default: the JobQueue's first queue
    priority: int = 0
    max_attempts: int = 5
    timezone: str = "UTC"
    catch_up: str = "latest"


Duration = int | str  # seconds, or a duration such as 30s, 5m, 1h30m (checked by queuesettings)


class RetrySchedule(_Model):
    """``retry`` of a ``spec.queueSettings`` entry: one kind (the CRD's CEL rule says so)."""

    intervals: list[Duration] | None = None
    every: Duration | None = None
    backoff_base: Duration | None = None
    backoff_max: Duration | None = None


class QueueSettingsEntry(_Model):
    """One of ``spec.queueSettings``: a queue's defaults, as ``skiplock queues set`` stores them."""

    queue: str = Field(min_length=1)
    max_attempts: int | None = None
    ttl: Duration | None = None
    result_ttl: Duration | None = None
    failure_ttl: Duration | None = None
    retry: RetrySchedule | None = None


class JobQueueSpec(_Model):
    database: Database
    queues: list[str] = Field(min_length=1)
    handlers: str | None = None
    pools: list[Pool] = Field(min_length=1)
    scaling: Scaling = Field(default_factory=Scaling)
    recovery: Recovery = Field(default_factory=Recovery)
    schedules: list[Schedule] = Field(default_factory=list)
    queue_settings: list[QueueSettingsEntry] = Field(default_factory=list)

    def pool_settings(self, pool: Pool) -> policy.Settings:
        """The pool's effective scaling settings: its own override, else ``spec.scaling``."""
        def pick(name: str) -> Any:
            own = getattr(pool.scaling, name)
            return own if own is not None else getattr(self.scaling, name)

        target = pick("target_jobs_per_pod")
        age = pick("max_pending_age_seconds")
        headroom = pick("headroom")
        if headroom is None:
            headroom = 0.0 if pool.gpu is not None else policy.DEFAULT_HEADROOM
        return policy.Settings(
            min_replicas=pool.min_replicas,
            max_replicas=pool.max_replicas,
            target_per_pod=target if target is not None else pool.concurrency,
            stabilization_seconds=float(pick("scale_down_stabilization_seconds")),
            scale_to_zero_after_seconds=float(pick("scale_to_zero_after_seconds")),
            max_pending_age_seconds=float(age) if age is not None else None,
            headroom=float(headroom),
            paused=bool(pick("paused")),
            max_pending=pool.gpu.max_pending if pool.gpu is not None else None,
            max_pending_pod_age_seconds=float(pool.gpu.max_pending_age_seconds) if pool.gpu is not None else 300.0,
        )

    def poll_interval(self) -> float:
        """How often the JobQueue is polled: the shortest interval any pool asks for."""
        own = [p.scaling.poll_interval_seconds for p in self.pools if p.scaling.poll_interval_seconds]
        return float(min([self.scaling.poll_interval_seconds, *own]))

    def served_elsewhere(self, pool: Pool) -> frozenset[str]:
        """For the catch-all pool (no jobTypes): the types other pools of this JobQueue name."""
        if pool.job_types:
            return frozenset()
        return frozenset(t for p in self.pools if p is not pool for t in p.job_types)


class InvalidSpec(ValueError):
    """The spec could not be read (an operator newer or older than the installed CRD)."""


def parse(spec: Any) -> JobQueueSpec:
    """Read a JobQueue's spec; ``InvalidSpec`` with a one-line description of what is wrong."""
    try:
        return JobQueueSpec.model_validate(dict(spec or {}))
    except ValidationError as exc:
        raise InvalidSpec(describe(exc)) from None
