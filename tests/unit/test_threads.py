"""Sync handlers' daemon threads: reused when idle, never queued behind a stuck one, never joined."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from skiplock.threads import DaemonThreads


async def test_idle_threads_are_reused_and_outcomes_delivered() -> None:
    pool = DaemonThreads("t")
    names = [await pool.run(lambda: threading.current_thread().name) for _ in range(20)]
    assert len(set(names)) == 1 and threading.current_thread().name not in names
    with pytest.raises(ZeroDivisionError):
        await pool.run(lambda: 1 / 0)
    assert all(t.daemon for t in threading.enumerate() if t.name.startswith("t-"))


async def test_a_stuck_handler_never_holds_up_the_next_one() -> None:
    pool = DaemonThreads("s")
    release = threading.Event()
    stuck = pool.run(release.wait)
    started = time.monotonic()
    assert await asyncio.wait_for(pool.run(lambda: "quick"), 5) == "quick"
    assert time.monotonic() - started < 1 and not stuck.done()
    release.set()
    assert await stuck is True


def test_a_stuck_thread_does_not_keep_the_process_alive() -> None:
    code = textwrap.dedent("""
        import asyncio, threading
        from skiplock.threads import in_daemon_thread
        async def main():
            in_daemon_thread(threading.Event().wait)  # never returns
            await asyncio.sleep(0.1)
        asyncio.run(main())
        print("exited")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "exited" in out.stdout, out.stderr
