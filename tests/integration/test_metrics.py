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
    await queue.enqueue_many([{"type": "waiting", "priority": p} for p in (1, 1, 7)])  # one bucket: 1-9
    async with running_worker(jobs, dsn, metrics_port=port, metrics_host="127.0.0.1", recovery_interval=0.2):
        await eventually(lambda: _all_completed(queue, done))

        async def scraped() -> bool:
            body = _get(f"http://127.0.0.1:{port}/metrics")[1]
            return ('skiplock_queue_pending_by_priority{priority="1-9",queue="default"} 3.0' in body
                    and 'skiplock_queue_pending_by_priority{priority=">=100",queue="default"} 0.0' in body
                    and 'skiplock_queue_depth{queue="default",state="completed"} 5.0' in body)

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


async def test_only_the_elected_worker_exports_queue_wide_numbers(queue: Queue, dsn: str) -> None:
    """Depth, oldest age and pending by priority come from the leader alone; the other worker of
    the same database exports none of them (a fleet of N pods: one copy, not N)."""
    jobs = JobRegistry()
    jobs.register("ok", lambda job: None)
    await queue.enqueue_many([{"type": "waiting", "priority": p} for p in (-5, 0, 3, 50, 500, 501)])
    ports = [free_port(), free_port()]
    async with running_worker(jobs, dsn, metrics_port=ports[0], metrics_host="127.0.0.1", recovery_interval=0.2) as a, \
            running_worker(jobs, dsn, metrics_port=ports[1], metrics_host="127.0.0.1", recovery_interval=0.2) as b:
        await eventually(lambda: _async(a.is_leader() != b.is_leader()), timeout=10)
        leader, other = (ports[0], ports[1]) if a.is_leader() else (ports[1], ports[0])

        async def exported() -> bool:
            body = _get(f"http://127.0.0.1:{leader}/metrics")[1]
            return 'skiplock_queue_pending_by_priority{priority=">=100",queue="default"} 2.0' in body

        await eventually(exported, timeout=10)
        body = _get(f"http://127.0.0.1:{leader}/metrics")[1]
        for bucket, n in (("<0", 1), ("0", 1), ("1-9", 1), ("10-99", 1)):
            assert f'skiplock_queue_pending_by_priority{{priority="{bucket}",queue="default"}} {n}.0' in body
        assert 'skiplock_queue_oldest_pending_seconds{queue="default"}' in body
        quiet = _get(f"http://127.0.0.1:{other}/metrics")[1]
        assert "skiplock_queue_pending_by_priority{" not in quiet
        assert "skiplock_queue_depth{" not in quiet


async def _async(value: bool) -> bool:
    return value
