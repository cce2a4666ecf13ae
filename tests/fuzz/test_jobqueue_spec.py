"""JobQueue specs generated from the CRD's own OpenAPI schema (so the strategies follow the schema as
it changes): every spec the schema admits is read by the operator unchanged (a CR the API server
accepts must never be one the operator cannot read), and a spec the operator refuses is refused
with its own one-line ``InvalidSpec``, never another exception."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from tests.ship.tools import missing

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "charts" / "skiplock" / "files" / "crds" / "jobqueues.skiplock.dev.yaml"
try:
    spec_module = importlib.import_module("skiplock.operator.spec")
    podpolicy = importlib.import_module("skiplock.operator.podpolicy")
    resources = importlib.import_module("skiplock.operator.resources")
except ImportError as exc:  # the operator's own module: only a broken install lacks it
    missing(f"skiplock.operator.spec ({exc})", "pip install -e ., by tools/setup.sh", module_level=True)


def crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def _quantity() -> SearchStrategy[Any]:
    return st.integers(0, 64) | st.sampled_from(["100m", "1", "2Gi", "512Mi", "0.5", "1e3"])


def from_schema(schema: dict[str, Any]) -> SearchStrategy[Any]:
    """Values that satisfy ``schema``'s structural rules (types, bounds, lengths, patterns, enums,
    required fields, list keys); CEL rules (x-kubernetes-validations) only narrow what the API
    server admits, so the operator must read all of these."""
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if schema.get("x-kubernetes-int-or-string") or "anyOf" in schema:
        pattern = schema.get("pattern")
        if pattern is None or "[KMGTPE]i" in pattern:  # a resource quantity
            return _quantity()
        return st.integers(0, 10**6) | st.from_regex(pattern, fullmatch=True, alphabet=st.characters(
            codec="ascii")).filter(lambda s: len(s) <= 30)  # e.g. a schedule's every: 90 or "1h30m"
    kind = schema.get("type")
    if kind == "object":
        props: dict[str, Any] = schema.get("properties") or {}
        if props:
            required = set(schema.get("required", []))
            return st.fixed_dictionaries({k: from_schema(v) for k, v in props.items() if k in required},
                                         optional={k: from_schema(v) for k, v in props.items() if k not in required})
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            keys = st.from_regex(r"[a-z][a-z0-9./-]{0,15}", fullmatch=True)
            return st.dictionaries(keys, from_schema(extra), max_size=3)
        return st.just({})
    if kind == "array":
        items = from_schema(schema["items"])
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 3), low + 3)
        map_keys: list[str] = schema.get("x-kubernetes-list-map-keys") or []
        if map_keys:  # a key left out counts as its default (imagePullSecrets' name "", a port's TCP)
            defaults = {k: schema["items"].get("properties", {}).get(k, {}).get("default") for k in map_keys}
            return st.lists(items, min_size=low, max_size=high,
                            unique_by=lambda v: tuple(v.get(k, defaults[k]) for k in map_keys))
        unique = schema.get("x-kubernetes-list-type") == "set"
        return st.lists(items, min_size=low, max_size=high, unique=unique)
    if kind == "string":
        low, high = schema.get("minLength", 0), min(schema.get("maxLength", 30), 30)
        if "pattern" in schema:  # ASCII: the API server's regexes (Go) read \w and \s as ASCII classes
            return st.from_regex(schema["pattern"], fullmatch=True, alphabet=st.characters(codec="ascii")).filter(
                lambda s: low <= len(s) <= high)
        return st.text(min_size=low, max_size=high)
    if kind == "integer":
        return st.integers(schema.get("minimum", -(2**31)), schema.get("maximum", 2**31 - 1))
    if kind == "number":
        return st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False)
    if kind == "boolean":
        return st.booleans()
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return st.just({})
    raise AssertionError(f"schema construct not handled: {schema}")


# A generated pod template makes a long example; hypothesis says so on every large repr.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
SCHEMA = crd_spec_schema()
specs = from_schema(SCHEMA)


def dump(model: Any) -> Any:
    return model.model_dump(by_alias=True, exclude_unset=True, mode="json")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_every_spec_the_schema_admits_is_read_unchanged(spec: dict[str, Any]) -> None:
    parsed = spec_module.parse(spec)
    assert dump(parsed) == spec


def _restricted(pod: dict[str, Any]) -> None:
    """What the restricted Pod Security Standard requires of every pod the operator admits."""
    sc = pod["securityContext"]
    assert sc.get("runAsNonRoot") is True and sc["seccompProfile"]["type"] in ("RuntimeDefault", "Localhost"), sc
    for c in pod["containers"] + pod.get("initContainers", []):
        csc = c["securityContext"]
        assert csc.get("allowPrivilegeEscalation") is False and "ALL" in csc["capabilities"]["drop"], c
        assert not csc.get("privileged") and csc.get("runAsNonRoot") is not False, c


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs)
def test_every_admitted_pool_renders_a_restricted_pod_or_is_refused_with_reasons(spec: dict[str, Any]) -> None:
    parsed = spec_module.parse(spec)
    body = {"metadata": {"name": "jq", "namespace": "ns", "uid": "u"}}
    for pool in parsed.pools:
        refused = resources.conflicts("jq", pool) + podpolicy.violations(
            [pool.model_dump(by_alias=True, exclude_none=True, mode="json")])
        assert all(line.startswith(f"spec.pools[{pool.name}]") and ": " in line for line in refused), refused
        if refused:
            continue
        pod = resources.deployment(body, parsed, pool, 1)["spec"]["template"]["spec"]
        names = [c["name"] for c in pod["containers"] + pod.get("initContainers", [])]
        assert names.count("worker") == 1 and len(set(names)) == len(names), names
        (worker,) = [c for c in pod["containers"] if c["name"] == "worker"]
        env = [e["name"] for e in worker["env"]]
        assert len(set(env)) == len(env), env
        volumes = [v["name"] for v in pod["volumes"]]
        assert len(set(volumes)) == len(volumes), volumes
        _restricted(pod)


def mutations() -> SearchStrategy[tuple[str, Any]]:
    """A path in a valid spec and a value the schema forbids there (the API server would refuse the
    CR; the operator reads specs leniently, but must never fail on one with anything but InvalidSpec)."""
    paths = st.sampled_from(["queues", "queues.0", "pools", "pools.0", "pools.0.name", "pools.0.image",
                             "pools.0.concurrency", "pools.0.minReplicas", "pools.0.gpu", "pools.0.gpu.count",
                             "pools.0.resources.requests", "pools.0.env", "pools.0.scaling.paused", "database",
                             "database.secretRef", "database.secretRef.name", "scaling", "scaling.pollIntervalSeconds",
                             "recovery.leaseSeconds", "recovery"])
    wrong = st.sampled_from([None, "", "ten", -1, 0, 2**70, 1.5, [], {}, [None], {"x": None}, True])
    return st.tuples(paths, wrong)


def _set(spec: dict[str, Any], path: str, value: Any) -> None:
    node: Any = spec
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs, mutation=mutations())
def test_broken_specs_are_read_or_refused_with_a_one_line_reason(spec: dict[str, Any],
                                                                 mutation: tuple[str, Any]) -> None:
    path, value = mutation
    _set(spec, path, value)
    try:
        spec_module.parse(spec)
    except spec_module.InvalidSpec as err:
        message = str(err)
        assert message and "\n" not in message, message
        assert re.search(r"(database|queues|pools|scaling|recovery)", message), message


@pytest.mark.parametrize("path, value", [
    ("queues", []), ("pools", []), ("database", {}), ("pools.0.concurrency", 0), ("pools.0.minReplicas", -1),
    ("pools.0.image", ""), ("recovery.leaseSeconds", 0), ("scaling.pollIntervalSeconds", "soon"),
])
def test_specs_that_would_break_the_operator_are_refused(path: str, value: Any) -> None:
    spec = {"database": {"secretRef": {"name": "db"}}, "queues": ["default"],
            "pools": [{"name": "cpu", "image": "w:1"}]}
    _set(spec, path, value)
    with pytest.raises(spec_module.InvalidSpec, match=path.split(".")[0]):
        spec_module.parse(spec)
