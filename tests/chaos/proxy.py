"""A small TCP proxy on loopback in front of PostgreSQL that a test can sever, stall or refuse.

It understands just enough of the PostgreSQL frontend protocol (startup, Parse, Bind, simple Query)
to know which statement a client is about to run, so a rule can cut the connection *during* a given
statement: ``before`` it reaches the server (it never runs), or ``after`` it was forwarded, at a
random moment while the server executes it or sends the answer (it may or may not have committed;
the client cannot tell). Another rule holds matching statements back for a while (a delayed
heartbeat). ``sever_all()`` cuts every open connection; ``refuse(True)`` makes new ones fail.

Everything runs on one asyncio loop in a daemon thread; the public methods are thread-safe.
``raw=True`` forwards any TCP protocol untouched (an API server's TLS): sever and refuse still work.
Clients should connect with ``sslmode=disable`` (``dsn()`` adds it) so the protocol stays readable.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

T = TypeVar("T")
_NEGOTIATION = {80877103, 80877104}  # SSLRequest, GSSENCRequest: answered with one byte, then startup
_CANCEL = 80877102


@dataclass
class CutRule:
    """Cut connections that run a statement containing ``marker``, with probability ``chance``.

    ``when``: ``before`` (the statement never reaches the server), ``after`` (forwarded, then cut
    within ``max_delay`` seconds), or ``random`` (either, half and half)."""

    name: str
    marker: str
    chance: float = 1.0
    when: Literal["before", "after", "random"] = "random"
    max_delay: float = 0.02
    limit: int | None = None
    fired: int = 0


@dataclass
class DelayRule:
    """Hold back statements containing ``marker`` for ``seconds`` (the whole connection stalls)."""

    name: str
    marker: str
    seconds: float
    chance: float = 1.0
    limit: int | None = None
    fired: int = 0


@dataclass(eq=False)
class _Conn:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closed: bool = False


class PgProxy:
    """``PgProxy(port).start()``; connect to ``proxy.port`` (or ``proxy.dsn(upstream_dsn)``)."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", seed: int | None = None,
                 raw: bool = False) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.raw = raw  # any TCP protocol (TLS too): sever and refuse only, no statement rules
        self.port = 0
        self.rng = random.Random(seed)
        self.cut_rules: list[CutRule] = []
        self.delay_rules: list[DelayRule] = []
        self.counts: Counter[str] = Counter()
        self._refusing = False
        self._conns: set[_Conn] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pg-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PgProxy:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for conn in list(self._conns):
                self._close(conn)
            await asyncio.sleep(0)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> PgProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def dsn(self, upstream_dsn: str) -> str:
        """``upstream_dsn`` pointed at this proxy, with TLS off so statements stay visible."""
        parts = urlsplit(upstream_dsn)
        host = f"{parts.username}@" if parts.username else ""
        query = dict(parse_qsl(parts.query))
        query["sslmode"] = "disable"
        return urlunsplit(parts._replace(netloc=f"{host}127.0.0.1:{self.port}", query=urlencode(query)))

    # -- faults (thread-safe) ----------------------------------------------------------------------

    def add_rule(self, rule: CutRule | DelayRule) -> None:
        if isinstance(rule, CutRule):
            self._loop.call_soon_threadsafe(self.cut_rules.append, rule)
        else:
            self._loop.call_soon_threadsafe(self.delay_rules.append, rule)

    def clear_rules(self) -> None:
        def clear() -> None:
            self.cut_rules.clear()
            self.delay_rules.clear()
        self._loop.call_soon_threadsafe(clear)

    def sever_all(self) -> int:
        """Cut every open connection now; returns how many."""

        async def sever() -> int:
            conns = list(self._conns)
            for conn in conns:
                self._close(conn)
            self.counts["severed"] += len(conns)
            return len(conns)

        return self._call(sever())

    def refuse(self, on: bool) -> None:
        """While on, new connections are accepted and closed at once (the database is unreachable)."""
        self._refusing = on

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- internals ---------------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        for writer in (conn.client, conn.server):
            with contextlib.suppress(Exception):
                sock = writer.get_extra_info("socket")
                if sock is not None:  # RST rather than FIN: a cut cable, not a polite goodbye
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
        current = asyncio.current_task()
        for task in conn.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.counts["accepted"] += 1
        if self._refusing:
            self.counts["refused"] += 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            self.counts["upstream_down"] += 1
            writer.close()
            return
        conn = _Conn(writer, up_writer)
        self._conns.add(conn)
        upstream = self._pump(conn, reader, up_writer) if self.raw else self._client_to_server(conn, reader, up_writer)
        conn.tasks = [asyncio.ensure_future(upstream),
                      asyncio.ensure_future(self._pump(conn, up_reader, writer))]

    async def _pump(self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._close(conn)

    async def _client_to_server(self, conn: _Conn, reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        statements: dict[str, str] = {}  # prepared statement name -> text
        unnamed = ""
        just_parsed: str | None = None  # the statement whose Parse came last (already delayed)
        try:
            # Untyped startup packets: negotiation requests (answered by one byte), then the startup.
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!ii", head)
                body = await reader.readexactly(length - 8)
                writer.write(head + body)
                await writer.drain()
                if code == _CANCEL:
                    return
                if code not in _NEGOTIATION:
                    break
            while True:
                head = await reader.readexactly(5)
                kind = head[:1]
                (length,) = struct.unpack("!i", head[1:])
                body = await reader.readexactly(length - 4)
                # A statement is delayed where it first shows up (its Parse, or the Bind of one
                # prepared earlier), so the server sees nothing of it until the delay is over; it
                # is cut where it is executed (its Bind, or a simple Query).
                run_text = None
                if kind == b"Q":
                    run_text = body.split(b"\0", 1)[0].decode(errors="replace")
                    await self._maybe_delay(run_text)
                elif kind == b"P":
                    name, rest = body.split(b"\0", 1)
                    query = rest.split(b"\0", 1)[0].decode(errors="replace")
                    if name:
                        statements[name.decode()] = query
                    else:
                        unnamed = query
                    await self._maybe_delay(query)
                    just_parsed = name.decode()
                elif kind == b"B":
                    _portal, rest = body.split(b"\0", 1)
                    stmt = rest.split(b"\0", 1)[0].decode()
                    run_text = statements.get(stmt, "") if stmt else unnamed
                    if stmt and stmt != just_parsed:
                        await self._maybe_delay(run_text)
                    just_parsed = None
                cut: float | None = None
                if run_text:
                    cut = self._match_cut(run_text)
                if cut is not None and cut < 0:
                    self._close(conn)
                    return
                writer.write(head + body)
                await writer.drain()
                if cut is not None:
                    asyncio.get_running_loop().call_later(cut, self._close, conn)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._close(conn)

    async def _maybe_delay(self, text: str) -> None:
        for rule in self.delay_rules:
            if rule.marker in text and (rule.limit is None or rule.fired < rule.limit) \
                    and self.rng.random() < rule.chance:
                rule.fired += 1
                self.counts[f"delay:{rule.name}"] += 1
                await asyncio.sleep(rule.seconds)

    def _match_cut(self, text: str) -> float | None:
        """None: no cut; negative: cut before forwarding; else seconds to wait after forwarding."""
        for rule in self.cut_rules:
            if rule.marker not in text or (rule.limit is not None and rule.fired >= rule.limit):
                continue
            if self.rng.random() >= rule.chance:
                continue
            rule.fired += 1
            when = rule.when if rule.when != "random" else self.rng.choice(["before", "after"])
            self.counts[f"cut:{rule.name}:{when}"] += 1
            return -1.0 if when == "before" else self.rng.uniform(0, rule.max_delay)
        return None
