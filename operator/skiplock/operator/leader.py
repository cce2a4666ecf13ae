"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that of several operator replicas
exactly one acts (the others wait, ready to take over).

The algorithm is client-go's: a candidate takes the Lease when it is free or when its record has
not changed for ``leaseDurationSeconds`` *as measured by the candidate's own clock since it first
saw that record* (so clock skew between nodes does not matter); the leader renews every
``renew_every`` seconds and steps down if it could not renew for ``renew_deadline`` seconds, which
is shorter than the lease, so it stops acting before anyone else may start. A clean shutdown
releases the Lease so a standby takes over at once. Every write is a compare-and-swap on the
Lease's resourceVersion.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .kube import Kube, KubeError

log = logging.getLogger("skiplock.operator.leader")


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration: float = 15.0

    @property
    def renew_every(self) -> float:
        return self.duration / 3

    @property
    def renew_deadline(self) -> float:
        return self.duration * 2 / 3

    @property
    def retry_every(self) -> float:
        return max(0.5, self.duration / 7)


def _micro_time(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, config: LeaseConfig) -> None:
        self.kube = kube
        self.config = config
        self._seen: tuple[str, float] | None = None  # (resourceVersion, monotonic time first seen)
        self._renewed = 0.0  # monotonic time of the last successful acquire or renew

    def _lease(self, previous: dict[str, Any] | None) -> dict[str, Any]:
        now = _micro_time(time.time())
        spec = dict((previous or {}).get("spec") or {})
        taking = spec.get("holderIdentity") != self.config.identity
        spec.update(holderIdentity=self.config.identity, leaseDurationSeconds=max(1, round(self.config.duration)),
                    renewTime=now)
        if taking:
            spec.update(acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + (
                1 if previous else 0))
        meta: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if previous:
            meta["resourceVersion"] = previous["metadata"]["resourceVersion"]
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}

    def _free(self, lease: dict[str, Any]) -> bool:
        """Whether ``lease`` may be taken: no holder, ours, or unchanged for a whole lease duration."""
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        if not holder or holder == self.config.identity:
            return True
        version, now = lease["metadata"]["resourceVersion"], time.monotonic()
        if self._seen is None or self._seen[0] != version:
            self._seen = (version, now)
        duration = float(spec.get("leaseDurationSeconds") or self.config.duration)
        return now - self._seen[1] >= duration

    async def try_acquire(self) -> bool:
        """One attempt to take the Lease."""
        c = self.config
        try:
            lease = await self.kube.read_lease(c.namespace, c.name)
            if lease is None:
                await self.kube.create_lease(c.namespace, self._lease(None))
            elif self._free(lease):
                await self.kube.replace_lease(c.namespace, c.name, self._lease(lease))
            else:
                return False
        except KubeError as exc:
            if not exc.conflict:
                log.warning("leader election: %s", exc)
            return False
        self._renewed = time.monotonic()
        return True

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process leads (True) or ``stop`` is set (False)."""
        announced = False
        while not stop.is_set():
            if await self.try_acquire():
                log.info("leading as %s (Lease %s/%s)", self.config.identity, self.config.namespace,
                         self.config.name)
                return True
            if not announced:
                log.info("standing by: Lease %s/%s is held by another operator", self.config.namespace,
                         self.config.name)
                announced = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.retry_every)
        return False

    async def _renew(self) -> bool | None:
        """Renew our Lease: True if renewed, False if it failed (try again), None if another holds it."""
        c = self.config
        try:
            lease = await self.kube.read_lease(c.namespace, c.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != c.identity:
                return None
            await self.kube.replace_lease(c.namespace, c.name, self._lease(lease))
        except KubeError as exc:
            log.warning("renewing the Lease: %s", exc)
            return False
        self._renewed = time.monotonic()
        return True

    async def hold(self) -> None:
        """Renew until another operator holds the Lease or renewals failed for ``renew_deadline``
        seconds; then return: this process must stop acting."""
        while True:
            await asyncio.sleep(self.config.renew_every)
            while not (renewed := await self._renew()):
                if renewed is None or time.monotonic() - self._renewed >= self.config.renew_deadline:
                    log.error("lost the Lease %s/%s", self.config.namespace, self.config.name)
                    return
                await asyncio.sleep(self.config.retry_every)

    async def release(self) -> None:
        """Give the Lease up (if still ours) so that a standby takes over without waiting."""
        c = self.config
        try:
            lease = await self.kube.read_lease(c.namespace, c.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != c.identity:
                return
            body = self._lease(lease)
            body["spec"].update(holderIdentity=None, leaseDurationSeconds=1)
            await self.kube.replace_lease(c.namespace, c.name, body)
            log.info("released the Lease %s/%s", c.namespace, c.name)
        except KubeError as exc:
            log.warning("could not release the Lease: %s", exc)
