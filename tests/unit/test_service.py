"""The services' start/stop contract (``skiplock.service``)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from skiplock import service
from skiplock.service import Service


class Ticker(Service):
    name = "ticker"

    def __init__(self, fail_first: bool = False) -> None:
        super().__init__()
        self.runs = 0
        self.ticks = 0
        self.stops = 0
        self.fail_first = fail_first

    async def run(self) -> None:
        self.runs += 1
        if self.fail_first and self.runs == 1:
            raise RuntimeError("a bug in the loop")
        while True:
            self.ticks += 1
            await asyncio.sleep(0.01)

    async def stopped(self) -> None:
        self.stops += 1


async def test_start_and_stop_are_idempotent() -> None:
    s = Ticker()
    await s.stop()  # never started: nothing to do
    assert s.stops == 0 and not s.running
    s.start()
    first = s._task
    s.start()
    assert s._task is first and s.running
    await asyncio.sleep(0.05)
    await s.stop()
    await s.stop()
    assert not s.running and s.stops == 1 and s.ticks > 0
    s.start()  # a stopped service starts again
    assert s.running
    await s.stop()
    assert s.stops == 2


async def test_a_failing_loop_is_logged_and_started_over(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(service, "RESTART_PAUSE", 0.01)
    s = Ticker(fail_first=True)
    with caplog.at_level(logging.ERROR, logger="skiplock.worker"):
        s.start()
        for _ in range(100):
            if s.ticks:
                break
            await asyncio.sleep(0.01)
        await s.stop()
    assert s.runs == 2 and s.ticks > 0
    assert any("ticker: unexpected error; starting over" in r.getMessage() for r in caplog.records)


async def test_a_service_that_must_not_restart_fails_its_waiter() -> None:
    class Strict(Ticker):
        restart_on_error = False

    s = Strict(fail_first=True)
    s.start()
    with pytest.raises(RuntimeError, match="a bug in the loop"):
        await s.wait()


async def test_stop_ends_a_loop_that_swallowed_its_cancel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop that loses a cancel (as Python 3.11's ``wait_for`` does when its inner wait finishes at
    the same moment: psycopg_pool waits for a pooled connection with it) still stops."""
    monkeypatch.setattr(service, "CANCEL_AGAIN", 0.05)

    class Swallower(Ticker):
        async def run(self) -> None:
            self.runs += 1
            while True:
                self.ticks += 1
                try:
                    await asyncio.sleep(0.01)
                except asyncio.CancelledError:
                    if self.ticks < 3:
                        continue  # lost, as a wait_for that also got its result would lose it
                    raise

    s = Swallower()
    s.start()
    await asyncio.sleep(0.005)
    await asyncio.wait_for(s.stop(), 5)
    assert not s.running and s.stops == 1
