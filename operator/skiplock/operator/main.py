"""``skiplock operator``: kopf with the JobQueue handlers, behind Lease-based leader election, with
/metrics, /healthz and /readyz served whether this replica leads or stands by."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer

import aiohttp
import kopf

from skiplock.errors import SkiplockError
from skiplock.metrics import serve
from skiplock.service import cancel_and_wait

from . import handlers
from .db import Databases
from .kube import Kube, KubeError, load_api_client
from .leader import LeaderElector, LeaseConfig
from .metrics import OperatorMetrics
from .runtime import Runtime
from .schema import Schemas
from .spec import GROUP

log = logging.getLogger("skiplock.operator")


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...]  # empty: the whole cluster
    metrics_port: int = 9090
    liveness_port: int | None = 8080
    lease: LeaseConfig | None = None  # None: standalone, no leader election
    query_timeout: float = 5.0
    host: str = "0.0.0.0"
    migrate: bool = True  # bring each JobQueue's database schema up to date before scaling
    pod_policy: bool = True  # refuse pools whose pods break podpolicy's rules

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Options:
        if args.all_namespaces and args.namespace:
            raise SkiplockError("give --namespace or --all-namespaces, not both")
        own = os.environ.get("POD_NAMESPACE")
        namespaces = () if args.all_namespaces else tuple(args.namespace or ([own] if own else []))
        if not args.all_namespaces and not namespaces:
            raise SkiplockError("give --namespace (repeatable) or --all-namespaces (or set POD_NAMESPACE)")
        lease = None
        if not args.standalone:
            identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{secrets.token_hex(3)}"
            lease = LeaseConfig(args.lease_namespace or own or (namespaces[0] if namespaces else "default"),
                                args.peering, identity, args.lease_duration)
        return cls(namespaces, args.metrics_port, args.liveness_port, lease, args.query_timeout,
                   migrate=not args.no_migrate, pod_policy=args.pod_policy == "enforce")


def settings() -> kopf.OperatorSettings:
    """kopf's settings: our finalizer and annotation names, no peering (the Lease does that), no
    CRD/namespace scanning (so the RBAC needs no cluster-wide list of either)."""
    s = kopf.OperatorSettings()
    s.persistence.finalizer = f"{GROUP}/operator"
    s.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    s.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP,
                                                                       key="last-handled-configuration")
    s.peering.standalone = True
    s.scanning.disabled = True
    s.posting.level = logging.INFO
    s.networking.request_timeout = 60.0
    s.networking.connect_timeout = 10.0
    s.background.instant_exit_timeout = 5.0  # a deleted JobQueue's daemons stop within a poll
    s.background.cancellation_polling = 2.0
    s.watching.server_timeout = 300
    s.watching.client_timeout = 330
    return s


@dataclass
class Health:
    """Liveness: the event loop turns. Readiness: kopf, once started, has finished its start-up."""

    last_turn: float = field(default_factory=time.monotonic)
    kopf_started: bool = False
    kopf_ready: asyncio.Event = field(default_factory=asyncio.Event)

    def live(self) -> bool:
        return time.monotonic() - self.last_turn < 30.0

    def ready(self) -> bool:
        return self.live() and (not self.kopf_started or self.kopf_ready.is_set())

    async def beat(self) -> None:
        while True:
            self.last_turn = time.monotonic()
            await asyncio.sleep(1.0)


def run_operator(args: argparse.Namespace) -> int:
    """Entry point of ``skiplock operator``."""
    options = Options.from_args(args)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # per-handler success lines
    return asyncio.run(operate(options))


async def operate(options: Options) -> int:
    rt = Runtime(Kube(load_api_client()), Databases(options.query_timeout), OperatorMetrics(),
                 schemas=Schemas(enabled=options.migrate, connect_timeout=options.query_timeout),
                 pod_policy=options.pod_policy)
    health = Health()
    ports = {options.metrics_port} | ({options.liveness_port} if options.liveness_port is not None else set())
    servers: list[ThreadingHTTPServer] = [
        serve(port, rt.metrics.registry, health.live, health.ready, options.host) for port in sorted(ports)]
    beat = asyncio.create_task(health.beat())
    for sig in (signal.SIGTERM, signal.SIGINT):  # kopf installs its own once it runs
        asyncio.get_running_loop().add_signal_handler(sig, rt.stop.set)
    try:
        if options.lease is None:
            return await _run_kopf(rt, options, health)
        return await _lead(rt, options, health, LeaderElector(rt.kube, options.lease))
    finally:
        beat.cancel()
        for server in servers:
            server.shutdown()
        await rt.close()


async def _lead(rt: Runtime, options: Options, health: Health, elector: LeaderElector) -> int:
    """Stand by until leading, then run kopf until told to stop or the Lease is lost."""
    if not await elector.acquire(rt.stop):
        return 0
    holding = asyncio.create_task(elector.hold())
    operating = asyncio.create_task(_run_kopf(rt, options, health))
    await asyncio.wait({holding, operating}, return_when=asyncio.FIRST_COMPLETED)
    if holding.done():  # lost the Lease: stop acting at once; a restart stands by again
        if holding.exception() is not None:
            log.error("leader election failed", exc_info=holding.exception())
        rt.stop.set()
        await operating
        return 1
    await cancel_and_wait(holding)  # no renewal after the release
    await elector.release()
    return operating.result()


async def _wait_for_api(rt: Runtime, namespace: str | None) -> bool:
    """Wait until the API server answers (False if told to stop first); an outage at start-up is
    waited out with backoff, not turned into a crash loop. A missing CRD is an error."""
    delay = 1.0
    while not rt.stop.is_set():
        try:
            served = await rt.kube.jobqueues_served(namespace)
        except KubeError as exc:
            if exc.status and exc.status < 500:  # refused by the server (RBAC...): not an outage
                raise SkiplockError(f"the API server refused to list JobQueues: {exc}") from None
            log.warning("waiting for the API server (retry in %.0fs): %s", delay, exc)
        else:
            if not served:
                raise SkiplockError("the JobQueue CRD (jobqueues.skiplock.dev) is not installed")
            return True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return False


# What a lost API server looks like to kopf: a refused or cut connection, a reply cut short (a body
# that ends early raises aiohttp.ClientPayloadError, outside kopf's own retries), a timeout.
TRANSIENT = (aiohttp.ClientError, OSError, TimeoutError)


async def _run_kopf(rt: Runtime, options: Options, health: Health) -> int:
    """Run kopf until told to stop. When kopf gives up on a lost API server (its start-up scan and
    retries do not outlast every outage), wait for the server and run it again in this process:
    an API server restart is not a reason to exit, and a crash loop would only add delay."""
    scope = "the whole cluster" if not options.namespaces else ", ".join(options.namespaces)
    namespace = options.namespaces[0] if options.namespaces else None
    delay = 1.0
    while await _wait_for_api(rt, namespace):
        log.info("operating on %s", scope)
        health.kopf_started = True
        try:
            await kopf.operator(
                registry=handlers.registry,
                settings=settings(),
                memo=kopf.Memo(runtime=rt),
                standalone=True,
                clusterwide=not options.namespaces,
                namespaces=list(options.namespaces),
                stop_flag=rt.stop,
                ready_flag=health.kopf_ready,
            )
            return 0
        except TRANSIENT as exc:
            if rt.stop.is_set():
                return 0
            health.kopf_ready.clear()
            log.warning("kopf lost the API server (%s: %s); starting it again in %.0fs",
                        type(exc).__name__, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(rt.stop.wait(), delay)
        delay = min(delay * 2, 30.0)
    return 0
