"""The worker's /metrics, /healthz and /readyz over real HTTP."""

from __future__ import annotations

import urllib.request

from skiplock import Job, JobRegistry, Queue, State
from skiplock.embedded import free_port
from tests.helpers import eventually, running_worker


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_metrics_and_probes_are_served(queue: Queue, dsn: str) -> None:
    jobs = JobRegistry()

    @jobs.handler("ok")
    async def ok(job: Job) -> None:
        return None

    port = free_port()
    done = await queue.enqueue_many([{"type": "ok"} for _ in range(5)])
    await queue.enqueue_many([{"type": "waiting", "priority": p} for p in (1, 1, 7)])
    async with running_worker(jobs, dsn, metrics_port=port, metrics_host="127.0.0.1", recovery_interval=0.2):
        await eventually(lambda: _all_completed(queue, done))

        async def scraped() -> bool:
            return 'skiplock_queue_pending_by_priority{priority="1",queue="default"} 2.0' in _get(
                f"http://127.0.0.1:{port}/metrics")[1]

        await eventually(scraped, timeout=10)
        status, body = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        for line in ('skiplock_jobs_completed_total{queue="default",type="ok"} 5.0',
                     'skiplock_queue_depth{queue="default",state="completed"} 5.0',
                     "skiplock_job_duration_seconds_bucket", "skiplock_job_queue_wait_seconds_count",
                     "skiplock_worker_concurrency 10.0"):
            assert line in body
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/readyz")[0] == 200
        assert _get(f"http://127.0.0.1:{port}/nope")[0] == 404


async def _all_completed(queue: Queue, ids: list[int]) -> bool:
    return all([(await queue.get(i)).state == State.COMPLETED for i in ids])
