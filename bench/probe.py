"""The coordinator's end of the handlers' UDP reports (``handler.Probe``)."""

from __future__ import annotations

import asyncio
import socket


class Listener:
    """Collects start latencies (ms), each start report (the job's ``t`` -> its start time) and
    per-process handled totals while registered on a loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port: int = self.sock.getsockname()[1]
        self.latencies_ms: list[float] = []
        self.starts: dict[float, float] = {}
        self.totals: dict[str, int] = {}
        self.arrived = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def handled(self) -> int:
        return sum(self.totals.values())

    def attach(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.arrived = asyncio.Event()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def close(self) -> None:
        self.detach()
        self.sock.close()

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(256).decode()
            except BlockingIOError:
                return
            kind, a, b = data.split()
            if kind == "L":
                self.starts[float(a)] = float(b)
                self.latencies_ms.append((float(b) - float(a)) * 1000.0)
                self.arrived.set()
            elif kind == "C":
                self.totals[a] = max(self.totals.get(a, 0), int(b))

    async def wait_latencies(self, count: int, timeout: float, what: str) -> None:
        """Until ``count`` latencies arrived; RuntimeError after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.latencies_ms) < count:
            self.arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise RuntimeError(f"{what}: {len(self.latencies_ms)} of {count} jobs started in {timeout:.0f}s")
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except TimeoutError:
                continue
