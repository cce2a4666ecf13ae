"""``skiplock operator``'s options (the process itself runs in tests/k8s)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import kopf
import pytest

from skiplock.cli import build_parser
from skiplock.errors import SkiplockError
from skiplock.operator import main
from skiplock.operator.main import Health, Options, settings


def options(*argv: str) -> Options:
    return Options.from_args(build_parser().parse_args(["operator", *argv]))


def test_namespaces_leader_election_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "skiplock-system")
    monkeypatch.setenv("POD_NAME", "operator-7d9f-abcde")
    o = options()
    assert o.namespaces == ("skiplock-system",)
    assert (o.metrics_port, o.liveness_port, o.query_timeout) == (9090, 8080, 5.0)
    assert o.lease is not None
    assert (o.lease.namespace, o.lease.name, o.lease.identity, o.lease.duration) == (
        "skiplock-system", "skiplock-operator", "operator-7d9f-abcde", 15.0)
    o = options("--all-namespaces", "--standalone", "--metrics-port", "9999", "--query-timeout", "2s")
    assert (o.namespaces, o.lease, o.metrics_port, o.query_timeout) == ((), None, 9999, 2.0)
    o = options("--namespace", "a", "--namespace", "b", "--peering", "mine", "--lease-namespace", "ops",
                "--lease-duration", "30")
    assert o.namespaces == ("a", "b") and o.lease is not None
    assert (o.lease.namespace, o.lease.name, o.lease.duration) == ("ops", "mine", 30.0)


def test_a_scope_is_required_and_unambiguous(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    with pytest.raises(SkiplockError, match="--namespace"):
        options()
    with pytest.raises(SkiplockError, match="not both"):
        options("--namespace", "a", "--all-namespaces")


def test_kopf_settings_keep_kopf_out_of_the_way() -> None:
    s = settings()
    assert s.persistence.finalizer == "skiplock.dev/operator"
    assert s.scanning.disabled and s.peering.standalone


async def test_health() -> None:
    health = Health()
    assert health.live() and health.ready()
    health.kopf_started = True
    assert not health.ready()
    health.kopf_ready.set()
    assert health.ready()
    health.last_turn -= 60
    assert not health.live() and not health.ready()


def run_kopf(monkeypatch: pytest.MonkeyPatch, operator: Any) -> Any:
    """``_run_kopf`` with ``operator`` standing in for ``kopf.operator``, the API server answering."""
    async def api_answers(rt: Any, namespace: str | None) -> bool:
        return True

    monkeypatch.setattr(kopf, "operator", operator)
    monkeypatch.setattr(main, "_wait_for_api", api_answers)
    rt: Any = SimpleNamespace(stop=asyncio.Event())
    return main._run_kopf(rt, options("--all-namespaces", "--standalone"), Health())


async def test_kopf_is_started_again_after_it_loses_the_api_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reply cut short by an API server restart escapes kopf's retries (seen in the chaos tier):
    the operator waits for the server and runs kopf again instead of exiting."""
    runs: list[float] = []

    async def operator(**kwargs: Any) -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) == 1:
            raise aiohttp.ClientPayloadError("Response payload is not completed")

    assert await run_kopf(monkeypatch, operator) == 0
    assert len(runs) == 2 and runs[1] - runs[0] >= 0.9  # after a backoff


async def test_other_kopf_failures_still_end_the_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    async def operator(**kwargs: Any) -> None:
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        await run_kopf(monkeypatch, operator)
