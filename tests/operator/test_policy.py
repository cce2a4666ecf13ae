"""The scaling policy: a pure function, tested with explicit times."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from skiplock.operator.policy import Decision, Direction, Observation, PolicyState, Settings, decide

S = Settings(min_replicas=0, max_replicas=10, target_per_pod=10, stabilization_seconds=60,
             scale_to_zero_after_seconds=300)


def obs(pending: int = 0, running: int = 0, replicas: int = 0, *, oldest: float = 0.0, ready: int | None = None,
        unschedulable: int = 0, scheduled: int | None = None) -> Observation:
    return Observation(pending, running, oldest, replicas, replicas if ready is None else ready, unschedulable,
                       scheduled=replicas - unschedulable if scheduled is None else scheduled)


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


GPU = Settings(max_replicas=6, target_per_pod=1, stabilization_seconds=60, max_pending=1,
              max_pending_pod_age_seconds=120)


def test_a_gpu_pool_adds_one_pod_beyond_the_scheduled_ones_and_grows_as_they_are_placed() -> None:
    first = decide(GPU, PolicyState(), obs(pending=300), now=0)
    assert (first.replicas, first.held, first.direction) == (1, True, Direction.UP)
    assert "at most 1 pod(s) waiting for capacity" in first.reason
    # Not placed yet (no PodScheduled verdict, or unschedulable): nothing more.
    assert decide(GPU, first.state, obs(pending=300, replicas=1, scheduled=0), now=10).replicas == 1
    waiting = decide(GPU, first.state, obs(pending=300, replicas=1, unschedulable=1), now=10)
    assert (waiting.replicas, waiting.held) == (1, True)
    # Placed: one more, each time.
    grown = run(GPU, [(20 + i, obs(pending=300, replicas=n, scheduled=n)) for i, n in enumerate(range(1, 6))])
    assert [d.replicas for d in grown] == [2, 3, 4, 5, 6]
    # Two GPUs, a pool of 6 asked for: never more than one pod waiting.
    two = decide(GPU, PolicyState(), obs(pending=300, replicas=3, unschedulable=1, scheduled=2), now=0)
    assert two.replicas == 3 and "1 waiting" in two.reason


def test_a_larger_max_pending_probes_with_more_pods() -> None:
    s = Settings(max_replicas=10, target_per_pod=1, max_pending=3)
    assert decide(s, PolicyState(), obs(pending=50), now=0).replicas == 3
    assert decide(s, PolicyState(), obs(pending=50, replicas=4, unschedulable=1, scheduled=3), now=0).replicas == 6
    assert decide(s, PolicyState(), obs(pending=2, replicas=0), now=0).replicas == 2  # the need is lower


def test_probing_never_shrinks_below_the_replicas_and_leaves_a_lower_need_alone() -> None:
    over = decide(GPU, PolicyState(), obs(pending=300, replicas=5, unschedulable=4, scheduled=1), now=0)
    assert (over.replicas, over.direction) == (5, None)  # more pending than allowed: the age rule trims
    calm = decide(GPU, PolicyState(), obs(pending=0, running=2, replicas=2), now=0)
    assert (calm.replicas, calm.held) == (2, False)


def test_unschedulable_surplus_is_scaled_back_after_its_age_then_probed_again() -> None:
    stuck = obs(pending=300, running=2, replicas=3, unschedulable=1, scheduled=2)
    d = run(GPU, [(0, stuck), (60, stuck), (119, stuck)])
    assert [x.replicas for x in d] == [3, 3, 3] and d[-1].state.unschedulable_since == 0
    back = decide(GPU, d[-1].state, stuck, now=120)
    assert (back.replicas, back.direction, back.held) == (2, Direction.DOWN, True)
    assert "unschedulable for 120s" in back.reason and back.state.probe_after == 240
    settled = obs(pending=300, running=2, replicas=2, scheduled=2)
    quiet = run(GPU, [(130, settled), (239, settled)], back.state)
    assert [x.replicas for x in quiet] == [2, 2] and all(x.held for x in quiet)
    assert "probing capacity again" in quiet[0].reason
    again = decide(GPU, quiet[-1].state, settled, now=240)
    assert (again.replicas, again.direction) == (3, Direction.UP)


def test_a_node_that_appears_while_a_pod_waits_lets_the_pool_grow_onto_it() -> None:
    stuck = obs(pending=300, running=2, replicas=3, unschedulable=1, scheduled=2)
    d = decide(GPU, PolicyState(), stuck, now=0)
    placed = decide(GPU, d.state, obs(pending=300, running=3, replicas=3, scheduled=3), now=30)
    assert placed.replicas == 4 and placed.state.unschedulable_since is None
    # The surplus timer starts again with the next wait: no scale-back 120 s after the first one.
    later = decide(GPU, placed.state, obs(pending=300, running=3, replicas=4, unschedulable=1, scheduled=3), 130)
    assert later.replicas == 4


def test_scale_back_keeps_min_replicas() -> None:
    s = Settings(min_replicas=3, max_replicas=6, target_per_pod=1, max_pending=1, max_pending_pod_age_seconds=10)
    stuck = obs(pending=10, replicas=4, unschedulable=2, scheduled=2)
    d = run(s, [(0, stuck), (10, stuck)])
    assert d[-1].replicas == 3


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 8), st.integers(0, 3)), min_size=1, max_size=40),
       st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_probing_never_adds_pods_beyond_scheduled_plus_max_pending(
        series: list[tuple[int, int, int]], max_pending: int) -> None:
    """Whatever the scheduler does, a scale-up never leaves more than ``max_pending`` pods unplaced."""
    s = Settings(max_replicas=12, target_per_pod=1, stabilization_seconds=30, max_pending=max_pending,
                 max_pending_pod_age_seconds=60)
    state, replicas = PolicyState(), 0
    for i, (pending, placed, stuck) in enumerate(series):
        scheduled = min(placed, replicas)
        unschedulable = min(stuck, replicas - scheduled)
        d = decide(s, state, obs(pending=pending, replicas=replicas, unschedulable=unschedulable,
                                 scheduled=scheduled), now=i * 10.0)
        if d.replicas > replicas:
            assert d.replicas - scheduled <= max_pending
        state, replicas = d.state, d.replicas


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
