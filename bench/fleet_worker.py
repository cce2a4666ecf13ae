"""One worker process of the fleet benchmark: ``python -m bench.fleet_worker DSN LISTEN_DSN CONCURRENCY``
(LISTEN_DSN ``-``: LISTEN on DSN). A no-op handler; prints ``ready``, works until SIGTERM, then
prints one JSON line of its own counts (claims, empty claims, jobs finished)."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from skiplock import JobRegistry, Worker, WorkerConfig

JOB_TYPE = "fleet"


async def main(dsn: str, listen: str, concurrency: int) -> None:
    jobs = JobRegistry()

    @jobs.handler(JOB_TYPE)
    async def noop(job: object) -> None:
        return None

    config = WorkerConfig(concurrency=concurrency, listen_database_url=None if listen == "-" else listen)
    worker = Worker(jobs, dsn, config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    print("ready", flush=True)
    await worker.run()
    print(json.dumps({"claimed": worker.claimed, "empty_claims": worker.executor.empty_claims,
                      "finished": worker.finished}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
