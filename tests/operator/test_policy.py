"""The scaling policy: a pure function, tested with explicit times."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock.operator.policy import Decision, Direction, Observation, PolicyState, Settings, decide

S = Settings(min_replicas=0, max_replicas=10, target_per_pod=10, stabilization_seconds=60,
             scale_to_zero_after_seconds=300)


def obs(pending: int = 0, running: int = 0, replicas: int = 0, *, oldest: float = 0.0, ready: int | None = None,
        unschedulable: int = 0) -> Observation:
    return Observation(pending, running, oldest, replicas, replicas if ready is None else ready, unschedulable)


def run(settings: Settings, steps: list[tuple[float, Observation]],
        state: PolicyState | None = None) -> list[Decision]:
    """Feed observations in order, carrying the state; returns every decision."""
    state = state or PolicyState()
    decisions = []
    for now, o in steps:
        d = decide(settings, state, o, now)
        decisions.append(d)
        state = d.state
    return decisions


def test_a_burst_is_served_on_the_first_poll() -> None:
    d = decide(S, PolicyState(), obs(pending=73), now=0)
    assert (d.replicas, d.direction) == (8, Direction.UP)
    assert "73 runnable" in d.reason


def test_running_jobs_count_as_load() -> None:
    assert decide(S, PolicyState(), obs(pending=5, running=26, replicas=2), now=0).replicas == 4


def test_headroom_keeps_spare_slots_that_grow_with_the_square_root_of_the_load() -> None:
    spare = Settings(min_replicas=0, max_replicas=100, target_per_pod=4, headroom=0.5)
    # 20 jobs: ceil(0.5 * sqrt(20)) = 3 spare slots -> ceil(23 / 4) = 6 pods (5 without headroom)
    assert decide(spare, PolicyState(), obs(running=20, replicas=5), now=0).replicas == 6
    # 400 jobs: 10 spare slots, 2.5 % more, not a fixed share of the load
    assert decide(spare, PolicyState(), obs(running=400, replicas=100), now=0).replicas == 100
    assert decide(spare, PolicyState(), obs(pending=400), now=0).replicas == 100
    assert decide(Settings(max_replicas=1000, target_per_pod=4, headroom=0.5), PolicyState(),
                  obs(pending=400), now=0).replicas == 103
    # no work, no spare pod; and a binding concurrency limit leaves no room for spare slots
    assert decide(spare, PolicyState(), obs(), now=0).replicas == 0
    limited = Observation(100, 0, 0.0, 0, 0, 0, within_limits=8)
    assert decide(spare, PolicyState(), limited, now=0).replicas == 2
    assert "headroom 0.5" in decide(spare, PolicyState(), obs(pending=20), now=0).reason


def test_max_replicas_caps_and_min_replicas_floors() -> None:
    assert decide(S, PolicyState(), obs(pending=10_000), now=0).replicas == 10
    floored = Settings(min_replicas=2, max_replicas=5, target_per_pod=10)
    assert decide(floored, PolicyState(), obs(), now=0).replicas == 2


def test_a_pool_at_zero_wakes_for_one_job_and_stays_at_zero_without() -> None:
    assert decide(S, PolicyState(), obs(), now=0).replicas == 0
    d = decide(S, PolicyState(), obs(pending=1), now=0)
    assert (d.replicas, d.direction) == (1, Direction.UP)


def test_scale_down_waits_for_the_stabilization_window_then_steps_down_gradually() -> None:
    steps = [(0.0, obs(pending=100, replicas=0))] + [(float(t), obs(pending=5, replicas=10)) for t in range(1, 90)]
    decisions = run(S, steps)
    assert decisions[0].replicas == 10
    # inside the window (the burst's recommendation of 10 is still in it): hold
    assert all(d.replicas == 10 and d.direction is None for d in decisions[1:60])
    assert "stabilization window" in decisions[30].reason
    # after it: down by half the gap per poll, never below the need (1)
    first = decisions[60]
    assert (first.direction, first.replicas) == (Direction.DOWN, 5)


def test_stepping_down_halves_the_gap_each_poll() -> None:
    state = PolicyState(((0.0, 1),))
    replicas, seen = 9, []
    for t in range(100, 110):
        d = decide(S, state, obs(pending=3, replicas=replicas), float(t))
        state, replicas = d.state, d.replicas
        seen.append(replicas)
    assert seen[:4] == [5, 3, 2, 1]
    assert seen[-1] == 1


def test_a_dip_shorter_than_the_window_changes_nothing() -> None:
    steps = [(0.0, obs(pending=50, replicas=5))]
    steps += [(float(t), obs(pending=0, running=0, replicas=5)) for t in range(1, 40)]  # idle for 39 s
    steps += [(float(t), obs(pending=50, replicas=5)) for t in range(40, 200)]  # back to work
    assert {d.replicas for d in run(S, steps)} == {5}


def test_scale_to_zero_after_the_idle_time_then_wake_again() -> None:
    s = Settings(min_replicas=0, max_replicas=10, target_per_pod=10, stabilization_seconds=30,
                 scale_to_zero_after_seconds=100)
    state = PolicyState.resumed(3, 0.0)
    replicas = 3
    history = []
    for t in range(0, 130):
        d = decide(s, state, obs(replicas=replicas), float(t))
        state, replicas = d.state, d.replicas
        history.append(replicas)
    assert history[29] == 3  # the window keeps the three
    assert 1 in history[30:100] and 0 not in history[:100]  # idle but not long enough: one pod stays
    assert history[100] == 0  # idle for scaleToZeroAfterSeconds: straight to min
    d = decide(s, state, obs(pending=1, replicas=0), 131.0)
    assert (d.replicas, d.direction) == (1, Direction.UP)


def test_idle_time_survives_a_restart_through_the_state() -> None:
    s = Settings(target_per_pod=10, stabilization_seconds=30, scale_to_zero_after_seconds=100)
    resumed = PolicyState.resumed(replicas=2, now=500.0, idle_since=390.0)
    assert decide(s, resumed, obs(replicas=2), 500.0).replicas == 0


def test_a_restarted_operator_never_scales_down_before_a_full_window() -> None:
    resumed = PolicyState.resumed(replicas=8, now=1000.0)
    assert decide(S, resumed, obs(pending=1, replicas=8), 1059.0).replicas == 8
    assert decide(S, resumed, obs(pending=1, replicas=8), 1060.5).direction is Direction.DOWN


def test_unschedulable_pods_hold_growth_but_not_shrinking() -> None:
    held = decide(S, PolicyState(), obs(pending=80, replicas=4, ready=2, unschedulable=2), now=0)
    assert (held.replicas, held.held, held.direction) == (4, True, None)
    assert "unschedulable" in held.reason
    resumed = decide(S, held.state, obs(pending=80, replicas=4, ready=4, unschedulable=0), now=1)
    assert (resumed.replicas, resumed.held) == (8, False)
    late = PolicyState(((0.0, 1),))
    shrink = decide(S, late, obs(pending=3, replicas=4, unschedulable=2), now=100)
    assert shrink.direction is Direction.DOWN


def test_jobs_waiting_too_long_add_a_pod_when_every_pod_is_ready() -> None:
    s = Settings(target_per_pod=10, max_pending_age_seconds=30)
    assert decide(s, PolicyState(), obs(pending=5, running=10, replicas=2, oldest=31), 0).replicas == 3
    assert decide(s, PolicyState(), obs(pending=5, running=10, replicas=2, oldest=29), 0).replicas == 2
    not_ready = obs(pending=5, running=10, replicas=2, oldest=31, ready=1)
    assert decide(s, PolicyState(), not_ready, 0).replicas == 2


def test_paused_keeps_the_replicas() -> None:
    paused = Settings(target_per_pod=1, paused=True)
    d = decide(paused, PolicyState(), obs(pending=50, replicas=2), 0)
    assert (d.replicas, d.direction, d.reason) == (2, None, "scaling is paused")


def test_zero_max_replicas_disables_a_pool() -> None:
    off = Settings(max_replicas=0, target_per_pod=1)
    assert decide(off, PolicyState(), obs(pending=50, replicas=3), 0).replicas == 0


loads = st.lists(st.tuples(st.integers(0, 500), st.integers(0, 200)), min_size=1, max_size=40)


@settings(max_examples=200, deadline=None)
@given(loads, st.integers(1, 20), st.integers(0, 120))
def test_bounds_and_first_poll_reaction_hold_for_any_load(series: list[tuple[int, int]], target: int,
                                                          window: int) -> None:
    s = Settings(min_replicas=1, max_replicas=25, target_per_pod=target, stabilization_seconds=window,
                 scale_to_zero_after_seconds=60)
    state, replicas = PolicyState(), 0
    for i, (pending, running) in enumerate(series):
        d = decide(s, state, obs(pending, running, replicas), float(i * 5))
        assert s.min_replicas <= d.replicas <= s.max_replicas
        need = min(s.max_replicas, max(1, -(-(pending + running) // target)))
        assert d.replicas >= min(need, s.max_replicas)  # never below what the work needs right now
        state, replicas = d.state, d.replicas


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 400), st.integers(0, 60), st.integers(1, 30))
def test_constant_load_never_flaps(work: int, replicas: int, polls: int) -> None:
    """Under a constant load the replica count moves in one direction only, then stays."""
    s = Settings(min_replicas=0, max_replicas=30, target_per_pod=7, stabilization_seconds=20,
                 scale_to_zero_after_seconds=40)
    state, current, directions = PolicyState(), min(replicas, 30), []
    for i in range(polls * 4):
        d = decide(s, state, obs(pending=work, replicas=current), float(i * 5))
        if d.direction is not None:
            directions.append(d.direction)
        state, current = d.state, d.replicas
    assert len(set(directions)) <= 1
