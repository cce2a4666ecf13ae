"""The scaling sees the concurrency limits: a pool is never scaled beyond what the limits let run
(``observe.demand`` caps each job type at its type-wide limit; ``policy.need`` scales for that)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock import Queue
from skiplock.operator import reconcile
from skiplock.operator.observe import concurrency_caps, demand
from skiplock.operator.policy import Observation, PolicyState, Settings, decide
from skiplock.operator.runtime import Runtime
from skiplock.operator.spec import parse

from .fakes import FakeKube
from .support import NS, jobqueue, spec


def row(type: str, pending: int, running: int = 0, queue: str = "default", oldest: float = 5.0) -> dict[str, Any]:
    return {"queue": queue, "type": type, "pending": pending, "running": running, "oldest_pending_seconds": oldest}


def limit(type: str, concurrency: int | None, tenant: str = "", rate: float | None = None) -> dict[str, Any]:
    return {"type": type, "tenant": tenant, "concurrency": concurrency, "rate": rate, "running": 0}


ONE_POOL = parse(spec({"name": "cpu", "image": "w", "concurrency": 1}, queues=["default", "other"]))
POOL = ONE_POOL.pools[0]


# -- what counts as a cap ---------------------------------------------------------------------------

def test_only_type_wide_concurrency_limits_cap_a_type() -> None:
    rows = [limit("gpu", 2), limit("api", None, rate=5.0), limit("mail", 3, tenant="acme"),
            limit("mail", 1, tenant="*"), limit("both", 4, rate=1.0)]
    assert concurrency_caps(rows) == {"gpu": 2, "both": 4}


# -- demand -----------------------------------------------------------------------------------------

def test_a_limited_type_counts_up_to_its_limit() -> None:
    d = demand(ONE_POOL, POOL, [row("gpu", 100), row("mail", 5)], {"gpu": 2})
    assert (d.pending, d.running, d.within_limits, d.limited_to) == (105, 0, 7, 7)  # the status shows all 105


def test_a_limit_holds_across_queues() -> None:
    d = demand(ONE_POOL, POOL, [row("gpu", 3, 1), row("gpu", 4, 1, queue="other")], {"gpu": 4})
    assert (d.pending, d.running, d.within_limits) == (7, 2, 4)


def test_a_limit_that_does_not_bind_changes_nothing() -> None:
    d = demand(ONE_POOL, POOL, [row("gpu", 1, 1), row("mail", 4)], {"gpu": 5})
    assert (d.pending, d.running, d.within_limits, d.limited_to) == (5, 1, 6, None)
    assert demand(ONE_POOL, POOL, [row("gpu", 9)]).within_limits is None
    assert demand(ONE_POOL, POOL, [row("gpu", 0), row("mail", 4)], {"gpu": 1}).within_limits is None  # no work of it


def test_running_jobs_above_a_lowered_limit_still_count() -> None:
    d = demand(ONE_POOL, POOL, [row("gpu", 10, 6)], {"gpu": 2})
    assert d.within_limits == 6  # their pods are busy; the pending ones wait for the limit


def test_types_another_pool_serves_are_not_counted() -> None:
    two = parse(spec({"name": "any", "image": "w"}, {"name": "gpu", "image": "w", "jobTypes": ["train"]}))
    rows = [row("train", 50), row("mail", 3)]
    catch_all, gpu = (demand(two, p, rows, {"train": 2, "mail": 1}) for p in two.pools)
    assert (catch_all.pending, catch_all.within_limits) == (3, 1)
    assert (gpu.pending, gpu.within_limits) == (50, 2)


# -- the policy -------------------------------------------------------------------------------------

S = Settings(min_replicas=0, max_replicas=50, target_per_pod=1, stabilization_seconds=60,
             scale_to_zero_after_seconds=300)


def test_the_need_is_what_the_limits_let_run() -> None:
    d = decide(S, PolicyState(), Observation(100, 0, 5.0, 0, within_limits=2), now=0)
    assert d.replicas == 2
    assert "100 runnable + 0 running jobs (2 within concurrency limits) at 1/pod need 2" in d.reason


def test_waiting_jobs_held_back_by_a_limit_add_no_pod() -> None:
    aged = Settings(target_per_pod=10, max_pending_age_seconds=30)
    limited = Observation(20, 10, 600.0, 2, ready=2, within_limits=12)
    assert decide(aged, PolicyState(), limited, now=0).replicas == 2
    at_the_limit = Observation(5, 10, 600.0, 2, ready=2, within_limits=15)  # a limit of 15 that just fits
    assert decide(aged, PolicyState(), at_the_limit, now=0).replicas == 2
    free = Observation(5, 10, 600.0, 2, ready=2)
    assert decide(aged, PolicyState(), free, now=0).replicas == 3  # without a limit, the rule still adds one


def test_a_pool_with_only_limited_work_is_not_idle() -> None:
    d = decide(S, PolicyState(), Observation(10, 0, 5.0, 0, within_limits=1), now=0)
    assert d.replicas == 1 and d.state.idle_since is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40), st.integers(1, 60)), min_size=1, max_size=30),
       st.integers(1, 8), st.integers(0, 3), st.booleans())
def test_scale_up_never_goes_beyond_the_limits(series: list[tuple[int, int, int]], target: int, floor: int,
                                               aged: bool) -> None:
    """For any load and limit: a pool grows to at most ceil(within limits / target) (or minReplicas)."""
    s = Settings(min_replicas=floor, max_replicas=40, target_per_pod=target, stabilization_seconds=30,
                 scale_to_zero_after_seconds=60, max_pending_age_seconds=10 if aged else None)
    state, replicas = PolicyState(), 0
    for i, (pending, running, cap) in enumerate(series):
        d0 = demand(ONE_POOL, POOL, [row("t", pending, running, oldest=100.0)], {"t": cap})
        o = Observation(d0.pending, d0.running, 100.0, replicas, replicas, 0, d0.within_limits)
        d = decide(s, state, o, float(i * 5))
        allowed = math.ceil(min(pending + running, max(cap, running)) / target)
        if d.replicas > replicas:
            assert d.replicas <= max(allowed, floor, 1 if pending + running else 0)
        assert d.replicas <= max(replicas, allowed, floor, 1 if pending + running else 0)
        state, replicas = d.state, d.replicas


# -- one poll against the database ------------------------------------------------------------------

async def test_a_limit_caps_the_scale_up_and_shows_in_the_status(rt: Runtime, kube: FakeKube, dsn: str) -> None:
    async with Queue(dsn) as q:
        await q.enqueue_many([{"type": "gpu"} for _ in range(100)] + [{"type": "mail"} for _ in range(3)])
        await q.set_limit("gpu", concurrency=2)
        await q.set_limit("mail", "acme", concurrency=1)  # one tenant's limit: the type stays open
    body = jobqueue(spec({"name": "cpu", "image": "w:1", "concurrency": 1, "maxReplicas": 50}))
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), body, {})
    status = kube.statuses[(NS, "jq")]
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 5  # 2 gpu + 3 mail
    (pool,) = status["pools"]
    assert (pool["pending"], pool["limitedTo"], pool["desiredReplicas"]) == (103, 5, 5)

    async with Queue(dsn) as q:  # the limit changes at runtime: the next poll follows
        await q.clear_limit("gpu")
    await reconcile.poll(rt, rt.jobqueue(NS, "jq"), body, {})
    (pool,) = kube.statuses[(NS, "jq")]["pools"]
    assert kube.deploys[(NS, "jq-cpu")]["spec"]["replicas"] == 50 and "limitedTo" not in pool
