"""The kopf handlers' own logic (the daemons' loops run against the real API server in tests/k8s)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import kopf
import pytest

from skiplock.operator import handlers as _handlers
from skiplock.operator.observe import PodInfo

from .fakes import FakeKube
from .support import Events, runtime

# kopf types its handlers for kopf's own calls (every kwarg); the tests pass the few each reads.
handlers: Any = _handlers


class Stopped:
    """What kopf gives an async daemon as ``stopped``, as far as ``_pause`` uses it."""

    def __init__(self) -> None:
        self.flag = asyncio.Event()

    async def wait(self) -> bool:
        return await self.flag.wait()


def test_the_registry_holds_the_operator_handlers() -> None:
    ids = {h.id for h in handlers.registry._spawning.get_all_handlers()}
    assert ids == {"scaler", "recovery"}
    assert {h.id for h in handlers.registry._indexing.get_all_handlers()} == {"worker_pods"}
    assert {h.id for h in handlers.registry._changing.get_all_handlers()} == {"schedules"}  # on deletion
    assert kopf.get_default_registry() is not handlers.registry


def test_worker_pods_are_indexed_by_jobqueue_and_pool() -> None:
    body = kopf.Body({"metadata": {"name": "jq-cpu-1-abcde", "namespace": "ns",
                                   "labels": {"skiplock.dev/jobqueue": "jq", "skiplock.dev/pool": "cpu"}}})
    entry = handlers.worker_pods(namespace="ns", labels=body.metadata.labels, body=body)
    assert entry == {("ns", "jq", "cpu"): PodInfo(name="jq-cpu-1-abcde", jobqueue="jq", pool="cpu")}


async def test_a_new_generation_wakes_the_scaler_a_status_write_does_not() -> None:
    rt = runtime(FakeKube(), Events())
    jq = rt.jobqueue("ns", "jq")
    jq.generation = 3
    memo = kopf.Memo(runtime=rt)
    handlers.jobqueue_changed(namespace="ns", name="jq", meta={"generation": 3}, memo=memo)
    assert not jq.wake.is_set()
    handlers.jobqueue_changed(namespace="ns", name="jq", meta={"generation": 4}, memo=memo)
    assert jq.wake.is_set()
    started = time.monotonic()
    await handlers._first(Stopped(), jq.wake.wait(), timeout=10)
    assert time.monotonic() - started < 1
    await rt.close()


async def test_a_stopped_daemon_stops_waiting_and_working_at_once() -> None:
    stopped = Stopped()
    asyncio.get_running_loop().call_later(0.1, stopped.flag.set)
    started = time.monotonic()
    work = asyncio.ensure_future(asyncio.sleep(30))
    await handlers._first(stopped, work, timeout=10)
    assert time.monotonic() - started < 1 and work.cancelled()
    await handlers._first(Stopped(), timeout=0.1)


def test_handlers_refuse_a_memo_without_the_runtime() -> None:
    with pytest.raises(RuntimeError, match="skiplock operator"):
        handlers.runtime_of(kopf.Memo())


@pytest.mark.parametrize(("host", "server"), [("10.96.0.1", "https://10.96.0.1:443"),
                                             ("fd00::1", "https://[fd00::1]:443"),
                                             (None, "https://kubernetes.default.svc")])
def test_in_cluster_login_finds_the_api_server_as_client_go_does(monkeypatch: pytest.MonkeyPatch, host: str | None,
                                                                 server: str) -> None:
    """KUBERNETES_SERVICE_HOST/PORT (set by the kubelet in every pod) over kopf's DNS name."""
    token = kopf.ConnectionInfo(server="https://kubernetes.default.svc", token="t", ca_path="/sa/ca.crt")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: token)
    if host:
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    else:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    info = handlers.login(logger=None)
    assert info is not None and info.server == server and info.token == "t" and info.ca_path == "/sa/ca.crt"


def test_outside_a_cluster_login_uses_the_kubeconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    config = kopf.ConnectionInfo(server="https://127.0.0.1:6443", token="k")
    monkeypatch.setattr(kopf, "login_with_service_account", lambda **_: None)
    monkeypatch.setattr(kopf, "login_with_kubeconfig", lambda **_: config)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    assert handlers.login(logger=None) is config
