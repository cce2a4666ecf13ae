"""The scaling policy: a pure function from what a pool needs to how many replicas it gets.

``decide(settings, state, observation, now)`` returns a ``Decision`` with the new ``PolicyState``;
nothing here reads a clock or does I/O, so every rule is unit-tested with explicit times.

The rules, in order (docs/operator.md explains them):

1. *Paused*: keep the current replicas.
2. *Need*: ``ceil((work + spare) / targetJobsPerPod)`` with work = runnable + running jobs, where
   each job type counts at most its concurrency limit (``within_limits``: more pods could not run
   more of it), and spare = ``ceil(headroom * sqrt(work))`` slots (square-root staffing: jobs
   arrive at random, and the spare slots a pool needs for arrivals to find one free grow with the
   square root of its load, not in proportion; ``headroom`` 0 for GPU pools by default); when
   ``maxPendingAgeSeconds`` is set, every pod is ready and jobs still wait longer than that, one
   pod more than now (not for work under a limit: the limit, not the pods, makes it wait).
3. *Floor*: a pool with work, or one that is up and was idle for less than
   ``scaleToZeroAfterSeconds``, keeps at least one pod; ``minReplicas`` always; ``maxReplicas`` caps.
4. *Up at once*: a need above the current replicas is applied on the same poll (a burst is served
   on the first poll, and a pool at zero wakes as soon as one job is runnable).
5. *Down after a window*: below the current replicas, the current need or the highest load (in
   pods, without the spare slots, which already absorb its swings) seen during
   ``scaleDownStabilizationSeconds`` wins, whichever is higher (a dip shorter than the window
   changes nothing, so the pool never flaps); then the pool steps down by half the gap per poll, at least one pod.
   After ``scaleToZeroAfterSeconds`` without any job the pool goes straight to ``minReplicas``,
   and above ``maxReplicas`` (lowered in the spec) straight to it.
6. *Unschedulable hold*: while pods of the pool cannot be scheduled (e.g. no GPU left), it does
   not grow; it resumes once the scheduler places them.
7. *Capacity probing* (pools whose pods need a scarce resource, ``max_pending`` set: GPU pools):
   instead of the hold, the pool grows to at most ``scheduled + max_pending`` pods, so no more
   than ``max_pending`` pods wait for capacity at a time (enough for a node autoscaler to react),
   and grows further only as they are placed. Pods unschedulable for ``max_pending_pod_age_seconds``
   are scaled back (down to the placed ones, never below ``minReplicas``), and the pool probes
   again after as long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Settings:
    """The effective scaling settings of one pool (``spec.scaling`` merged with the pool's own)."""

    min_replicas: int = 0
    max_replicas: int = 10
    target_per_pod: int = 10
    stabilization_seconds: float = 120.0
    scale_to_zero_after_seconds: float = 300.0
    max_pending_age_seconds: float | None = None
    headroom: float = 0.0  # spare slots = ceil(headroom * sqrt(work))
    paused: bool = False
    max_pending: int | None = None  # scarce pools: pods beyond the scheduled ones at most (None: no probing)
    max_pending_pod_age_seconds: float = 300.0  # unschedulable this long: scaled back


DEFAULT_HEADROOM = 1.0  # CPU pools; GPU pools default to 0 (bench/autoscale: the headroom sweep)


@dataclass(frozen=True)
class Observation:
    """What the operator saw on this poll."""

    pending: int  # runnable now: pending, and scheduled or retrying jobs that are due
    running: int
    oldest_pending_seconds: float
    replicas: int  # the Deployment's spec.replicas
    ready: int = 0
    unschedulable: int = 0  # pods the scheduler could not place
    within_limits: int | None = None  # of pending + running, what the concurrency limits let run (None: no limit)
    scheduled: int = 0  # pods the scheduler placed on a node (capacity probing counts from them)

    @property
    def work(self) -> int:
        return self.pending + self.running

    @property
    def load(self) -> int:
        """The jobs the pool's pods can carry at once: the work, within the concurrency limits."""
        return self.work if self.within_limits is None else min(self.work, self.within_limits)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between polls (``idle_since`` survives restarts via the status)."""

    recommendations: tuple[tuple[float, int], ...] = ()  # (time, need) within the window
    idle_since: float | None = None
    unschedulable_since: float | None = None  # since when some pod of the pool cannot be scheduled
    probe_after: float | None = None  # capacity probing: no pod beyond the scheduled ones before this

    @classmethod
    def resumed(cls, replicas: int, now: float, idle_since: float | None = None) -> PolicyState:
        """The state of an operator that just (re)started: it acts as if the current replicas were
        recommended now, so it never scales down before a full stabilization window."""
        return cls(((now, replicas),), idle_since)


class Direction(StrEnum):
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    state: PolicyState
    direction: Direction | None = None
    held: bool = False  # growth withheld because pods are unschedulable (or, probing, not yet placed)


def need(settings: Settings, obs: Observation) -> int:
    """Replicas the work asks for, before the floor, the cap and the window."""
    load = obs.load
    spare = math.ceil(settings.headroom * math.sqrt(load)) if load and load == obs.work else 0  # a binding
    # concurrency limit, not the pods, holds the rest back: no spare slots beside it
    wanted = math.ceil((load + spare) / settings.target_per_pod)
    if _aged(settings, obs):
        wanted = max(wanted, obs.replicas + 1)
    return wanted


def _aged(settings: Settings, obs: Observation) -> bool:
    """Whether the ``maxPendingAgeSeconds`` rule asks for one pod more. With a limit on the work,
    more pods than it lets run would sit idle: the rule stays out."""
    age = settings.max_pending_age_seconds
    return (age is not None and obs.within_limits is None and obs.pending > 0 and obs.oldest_pending_seconds > age
            and obs.replicas > 0 and obs.ready >= obs.replicas and obs.unschedulable == 0)


def decide(settings: Settings, state: PolicyState, obs: Observation, now: float) -> Decision:
    """The replicas this pool should have now, and why."""
    if settings.paused:
        return Decision(obs.replicas, "scaling is paused", state)
    idle_since = None if obs.work else (state.idle_since if state.idle_since is not None else now)
    idle_for = 0.0 if idle_since is None else now - idle_since
    asleep = idle_since is not None and idle_for >= settings.scale_to_zero_after_seconds

    floor = settings.min_replicas if asleep or (obs.replicas == 0 and not obs.work) else max(
        settings.min_replicas, 1)
    wanted = min(max(need(settings, obs), floor), settings.max_replicas)
    horizon = now - settings.stabilization_seconds
    kept = tuple(r for r in state.recommendations if r[0] > horizon and r[0] <= now)
    # The window remembers the load in pods, without the spare slots (they absorb its random swings
    # already: holding the peak of load + spare would count them twice); the age rule's pod stays.
    held_need = wanted if _aged(settings, obs) else min(
        max(math.ceil(obs.load / settings.target_per_pod), floor), settings.max_replicas)
    recs = (*kept, (now, held_need))
    stuck_since = (state.unschedulable_since if state.unschedulable_since is not None else now) \
        if obs.unschedulable else None
    probe_after = state.probe_after if state.probe_after is not None and state.probe_after > now else None
    new_state = PolicyState(recs, idle_since, stuck_since, probe_after)

    if wanted >= obs.replicas:
        target, reason = wanted, _why(settings, obs, wanted)
    elif obs.replicas > settings.max_replicas:
        target, reason = settings.max_replicas, f"maxReplicas is {settings.max_replicas}"
    elif asleep:
        target = wanted
        reason = f"no jobs for {idle_for:.0f}s (scaleToZeroAfterSeconds {settings.scale_to_zero_after_seconds:g})"
        new_state = PolicyState(((now, wanted),), idle_since, stuck_since, probe_after)
    else:
        stable = max(wanted, *(n for _, n in recs))
        if stable >= obs.replicas:
            target = obs.replicas
            reason = (f"needs {wanted}, holding {obs.replicas} for the "
                      f"{settings.stabilization_seconds:g}s stabilization window")
        else:
            step = max(1, math.ceil((obs.replicas - stable) / 2))
            target = max(stable, obs.replicas - step)
            reason = f"{_why(settings, obs, wanted)}; stepping down towards {stable}"

    held = False
    if settings.max_pending is not None:
        target, reason, held, new_state = _probe(settings, new_state, obs, now, target, reason, wanted)
    elif target > obs.replicas and obs.unschedulable > 0:
        target, held = obs.replicas, True
        reason = f"{obs.unschedulable} pod(s) unschedulable: holding at {obs.replicas} (needs {wanted})"
    direction = (Direction.UP if target > obs.replicas else Direction.DOWN if target < obs.replicas
                 else None)
    return Decision(target, reason, new_state, direction, held)


def _probe(settings: Settings, state: PolicyState, obs: Observation, now: float, target: int, reason: str,
           wanted: int) -> tuple[int, str, bool, PolicyState]:
    """Capacity probing (rule 7): at most ``max_pending`` pods beyond the scheduled ones; the
    unschedulable surplus scaled back after ``max_pending_pod_age_seconds``."""
    assert settings.max_pending is not None
    age = settings.max_pending_pod_age_seconds
    since = state.unschedulable_since
    if since is not None and now - since >= age and target > obs.scheduled:
        back = min(obs.replicas, max(obs.scheduled, settings.min_replicas))
        if back < target:
            return back, (f"{obs.unschedulable} pod(s) unschedulable for {now - since:.0f}s "
                          f"(maxPendingAgeSeconds {age:g}): scaling back to the {obs.scheduled} scheduled, "
                          f"probing again in {age:g}s (needs {wanted})"), True, \
                PolicyState(state.recommendations, state.idle_since, None, now + age)
    allowance = 0 if state.probe_after is not None else settings.max_pending
    ceiling = obs.scheduled + allowance
    if target > obs.replicas and target > ceiling:
        capped = max(obs.replicas, ceiling)
        waiting = obs.replicas - obs.scheduled
        why = (f"probing capacity again after {state.probe_after - now:.0f}s" if state.probe_after is not None
               else f"at most {settings.max_pending} pod(s) waiting for capacity")
        return capped, (f"{obs.scheduled} pod(s) scheduled, {waiting} waiting; {why}: "
                        f"{capped} replicas (needs {wanted})"), True, state
    return target, reason, False, state


def _why(settings: Settings, obs: Observation, wanted: int) -> str:
    limited = f" ({obs.load} within concurrency limits)" if obs.load < obs.work else ""
    spare = f" with headroom {settings.headroom:g}" if settings.headroom and obs.load == obs.work else ""
    return (f"{obs.pending} runnable + {obs.running} running jobs{limited} at {settings.target_per_pod}/pod"
            f"{spare} need {wanted} (min {settings.min_replicas}, max {settings.max_replicas})")
