"""Real processes for the ship tier's end-to-end tests: ``skiplock operator``, ``skiplock worker``
and a Prometheus server, all on loopback, each logging to a file that failures quote."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from skiplock.embedded import free_port

from .tools import REPO

T = TypeVar("T")
FIXTURES = REPO / "tests" / "fixtures"


def wait_until(probe: Callable[[], T | Literal[False] | None], timeout: float, what: str, every: float = 0.25,
               state: Callable[[], object] | None = None) -> T:
    """Call ``probe`` until it returns something truthy; fail naming ``what`` (and ``state()``)
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}"
                                 + (f" (last seen: {state()})" if state else ""))
        time.sleep(every)
    return result


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


class Process:
    """A child process in its own session, its output in ``log``."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str]) -> None:
        self.name, self.argv, self.log, self.env = name, list(argv), log, dict(env)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- last lines of {self.log} ({self.name}) ---\n" + "\n".join(text.splitlines()[-lines:])


def skiplock_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "skiplock", *args]


class Operator(Process):
    """``skiplock operator`` with a kubeconfig (the admin's, or a ServiceAccount's token)."""

    def __init__(self, kubeconfig: Path, log: Path, *args: str, pod_namespace: str | None = None) -> None:
        self.metrics_port, self.health_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "SKIPLOCK_DATABASE_URL")}
        env.update({"KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"})
        if pod_namespace:
            env.update({"POD_NAMESPACE": pod_namespace, "POD_NAME": "skiplock-operator-test"})
        argv = skiplock_argv("operator", "--metrics-port", str(self.metrics_port),
                             "--liveness-port", str(self.health_port), *args)
        super().__init__("operator", argv, log, env)

    def wait_healthy(self, timeout: float = 60) -> None:
        def healthy() -> bool:
            if not self.alive():
                raise AssertionError(f"the operator exited\n{self.tail()}")
            return http_get(f"http://127.0.0.1:{self.health_port}/healthz")[0] == 200

        wait_until(healthy, timeout, "the operator's /healthz")

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.metrics_port}/metrics")[1]


class Worker(Process):
    """``skiplock worker`` with the test handlers (tests/fixtures/jobs_fixture.py) and /metrics."""

    def __init__(self, name: str, dsn: str, log: Path, *args: str, **env: str) -> None:
        self.metrics_port = free_port()
        full_env = {**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(FIXTURES), "PYTHONUNBUFFERED": "1",
                    "SKIPLOCK_POLL_INTERVAL": "0.2", "SKIPLOCK_RECOVERY_INTERVAL": "0.5",
                    "SKIPLOCK_BACKOFF_BASE": "0.1", "SKIPLOCK_BACKOFF_MAX": "0.5", **env}
        argv = skiplock_argv("worker", "--handlers", "jobs_fixture:jobs", "--metrics-port", str(self.metrics_port),
                             *args)
        super().__init__(name, argv, log, full_env)

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"worker {self.name} exited\n{self.tail()}")
            return http_get(f"http://127.0.0.1:{self.metrics_port}/readyz")[0] == 200

        wait_until(ready, timeout, f"worker {self.name} /readyz")


class Prometheus(Process):
    """A real Prometheus server (Debian's package) on loopback with a temporary TSDB."""

    def __init__(self, binary: str, workdir: Path, scrape_configs: list[dict[str, Any]],
                 rule_files: Sequence[Path] = ()) -> None:
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
                  "rule_files": [str(p) for p in rule_files], "scrape_configs": scrape_configs}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(json.dumps(config, indent=2))  # JSON is YAML
        argv = [binary, f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
                "--storage.tsdb.retention.time=1h"]
        super().__init__("prometheus", argv, workdir / "prometheus.log", os.environ)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"prometheus exited\n{self.tail()}")
            return http_get(f"{self.url}/-/ready")[0] == 200

        wait_until(ready, timeout, "prometheus /-/ready")

    def api(self, path: str, **params: str) -> Any:
        status, body = http_get(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=30)
        try:
            answer = json.loads(body)
        except ValueError:
            raise AssertionError(f"prometheus answered {status}: {body[:500]}") from None
        return answer

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Evaluate ``expr`` now; AssertionError with Prometheus' message if it errors."""
        answer = self.api("query", query=expr)
        if answer.get("status") != "success":
            raise AssertionError(f"{answer.get('errorType')}: {answer.get('error')}\n  in: {expr}")
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def targets_up(self, job: str) -> list[bool]:
        active = self.api("targets", state="active")["data"]["activeTargets"]
        return [t["health"] == "up" for t in active if t["labels"]["job"] == job]
