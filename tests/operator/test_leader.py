"""Leader election on a Lease: one leader, standbys take over when it goes quiet or lets go."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from skiplock.operator.leader import LeaderElector, LeaseConfig

from .fakes import FakeKube


def elector(kube: FakeKube, identity: str, duration: float = 0.6) -> LeaderElector:
    return LeaderElector(cast(Any, kube), LeaseConfig("ops", "skiplock-operator", identity, duration))


async def test_one_leads_the_other_stands_by_until_the_leader_goes_quiet() -> None:
    kube = FakeKube()
    a, b = elector(kube, "a", duration=1), elector(kube, "b", duration=1)
    assert await a.try_acquire()
    assert not await b.try_acquire()
    assert kube.leases[("ops", "skiplock-operator")]["spec"]["holderIdentity"] == "a"
    await asyncio.sleep(0.5)
    assert not await b.try_acquire()  # a's record is not yet a whole lease old (as b saw it)
    await asyncio.sleep(0.6)
    assert await b.try_acquire()
    lease = kube.leases[("ops", "skiplock-operator")]["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("b", 1)


async def test_renewals_keep_the_lease_and_a_release_hands_it_over_at_once() -> None:
    kube = FakeKube()
    a, b = elector(kube, "a"), elector(kube, "b")
    stop = asyncio.Event()
    assert await a.acquire(stop)
    holding = asyncio.create_task(a.hold())
    waiting = asyncio.create_task(b.acquire(stop))
    await asyncio.sleep(1.5)  # more than two lease durations: a renews, b keeps waiting
    assert not waiting.done()
    holding.cancel()
    await a.release()
    assert await asyncio.wait_for(waiting, 2) is True


async def test_the_leader_steps_down_when_another_holds_the_lease_or_renewals_fail() -> None:
    kube = FakeKube()
    a = elector(kube, "a")
    assert await a.try_acquire()
    kube.leases[("ops", "skiplock-operator")]["spec"]["holderIdentity"] = "intruder"
    await asyncio.wait_for(a.hold(), 2)  # returns: lost

    unreachable = FakeKube()
    c = elector(unreachable, "c")
    assert await c.try_acquire()
    unreachable.down = True
    await asyncio.wait_for(c.hold(), 3)  # cannot renew for renew_deadline: gives up


async def test_stop_ends_a_wait_for_leadership() -> None:
    kube = FakeKube()
    assert await elector(kube, "a", duration=30).try_acquire()
    stop = asyncio.Event()
    waiting = asyncio.create_task(elector(kube, "b", duration=30).acquire(stop))
    await asyncio.sleep(0.1)
    stop.set()
    assert await asyncio.wait_for(waiting, 6) is False
