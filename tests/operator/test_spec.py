"""The JobQueue models: parsing, effective settings, and agreement with the CRD's schema."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from skiplock.operator.policy import DEFAULT_HEADROOM
from skiplock.operator.spec import JobQueueSpec, ScalingOverride, parse

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "skiplock" / "files" / "crds" / "jobqueues.skiplock.dev.yaml"
EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("jobqueue-*.yaml"))


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def minimal(**extra: Any) -> dict[str, Any]:
    return {"database": {"secretRef": {"name": "db"}}, "queues": ["default"],
            "pools": [{"name": "cpu", "image": "w:1"}], **extra}


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class in an annotation like ``Pool``, ``list[Pool]`` or ``Gpu | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        if found := _model_of(arg):
            return found
    return None


def _walk(model: type[BaseModel], schema: dict[str, Any], path: str) -> Iterator[tuple[str, Any, Any]]:
    """(path, model default, schema default) for every optional field, into nested models too; an
    empty default (None, [], {} or a model) and no schema default mean the same."""
    props = schema.get("properties") or {}
    assert set(props) == {f.alias or n for n, f in model.model_fields.items()}, path
    for name, field in model.model_fields.items():
        prop = props[field.alias or name]
        if not field.is_required():
            default = field.get_default(call_default_factory=True)
            mine = {} if isinstance(default, BaseModel) or default in (None, []) else default
            yield f"{path}.{field.alias}", mine, prop.get("default", {})
        nested = _model_of(field.annotation)
        if nested is not None:
            yield from _walk(nested, prop.get("items", prop), f"{path}.{field.alias}")


def test_model_fields_and_defaults_match_the_crd() -> None:
    spec_schema = crd_schema()["properties"]["spec"]
    assert [d for d in _walk(JobQueueSpec, spec_schema, "spec") if d[1] != d[2]] == []


def test_defaults_fill_a_minimal_spec() -> None:
    spec = parse(minimal())
    pool = spec.pools[0]
    assert (pool.concurrency, pool.min_replicas, pool.max_replicas) == (10, 0, 10)
    assert spec.database.secret_ref.key == "DATABASE_URL"
    assert spec.pool_settings(pool).target_per_pod == 10
    assert spec.poll_interval() == 10.0


def test_headroom_defaults_to_spare_slots_on_cpu_pools_only() -> None:
    spec = parse(minimal(pools=[{"name": "cpu", "image": "w:1"}, {"name": "gpu", "image": "w:1", "gpu": {}},
                                {"name": "lean", "image": "w:1", "scaling": {"headroom": 0}}]))
    cpu, gpu, lean = (spec.pool_settings(p) for p in spec.pools)
    assert (cpu.headroom, gpu.headroom, lean.headroom) == (DEFAULT_HEADROOM, 0.0, 0.0)
    wide = parse(minimal(scaling={"headroom": 2}))
    assert wide.pool_settings(wide.pools[0]).headroom == 2.0


def test_pool_scaling_overrides_the_queue_wide_settings_field_by_field() -> None:
    spec = parse(minimal(
        scaling={"pollIntervalSeconds": 15, "scaleDownStabilizationSeconds": 90, "paused": True},
        pools=[{"name": "a", "image": "w", "concurrency": 4,
                "scaling": {"targetJobsPerPod": 20, "pollIntervalSeconds": 2, "paused": False}},
               {"name": "b", "image": "w", "jobTypes": ["x"], "concurrency": 3}]))
    a, b = (spec.pool_settings(p) for p in spec.pools)
    assert (a.target_per_pod, a.stabilization_seconds, a.paused) == (20, 90.0, False)
    assert (b.target_per_pod, b.stabilization_seconds, b.paused) == (3, 90.0, True)
    assert spec.poll_interval() == 2.0
    assert ScalingOverride().paused is None


def test_the_catch_all_pool_leaves_types_of_other_pools() -> None:
    spec = parse(minimal(pools=[{"name": "any", "image": "w"},
                                {"name": "gpu", "image": "w", "jobTypes": ["train", "embed"]}]))
    assert spec.served_elsewhere(spec.pools[0]) == {"train", "embed"}
    assert spec.served_elsewhere(spec.pools[1]) == frozenset()


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    spec = parse(minimal(limits=[{"type": "gpu", "concurrency": 2}],
                         schedules=[{"name": "nightly", "cron": "0 3 * * *", "type": "report", "jitter": "5s"}]))
    assert spec.queues == ["default"] and spec.schedules[0].name == "nightly"


def test_schedules_are_read_as_admitted_with_the_crds_defaults() -> None:
    spec = parse(minimal(schedules=[{"name": "nightly", "cron": "0 3 * * *", "type": "report"},
                                    {"name": "often", "every": "5m", "type": "sync", "catchUp": "all",
                                     "maxAttempts": 2, "payload": [1, "two"]}]))
    nightly, often = spec.schedules
    assert (nightly.queue, nightly.timezone, nightly.catch_up, nightly.priority, nightly.max_attempts,
            nightly.payload, nightly.every) == (None, "UTC", "latest", 0, 5, {}, None)
    assert (often.every, often.catch_up, often.max_attempts, often.payload) == ("5m", "all", 2, [1, "two"])
    assert parse(minimal()).schedules == []


def test_an_unreadable_spec_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="pools"):
        parse({"database": {"secretRef": {"name": "db"}}, "queues": ["q"], "pools": []})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_the_examples_parse(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "JobQueue"]
    assert docs
    for doc in docs:
        parse(doc["spec"])
