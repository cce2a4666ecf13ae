"""The Host allow-list: the UI answers only to the names it is meant to be reached by.

Without it, DNS rebinding turns any web page the user visits into a client of a credential-free UI
on loopback (or behind ``kubectl port-forward``): the attacker's name resolves to 127.0.0.1, the
browser sends the attacker's Host, and the page reads and acts on the queue. By default only
loopback names are allowed (``localhost``, ``127.0.0.1``, ``::1``) and the address the UI is bound
to, if it is a specific one; ``--allowed-hosts`` names the others (an Ingress host), ``*`` any
(refused without credentials). ``/healthz`` answers whatever the Host (probes use the pod IP).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::")


def default_allowed_hosts(bind_host: str) -> list[str]:
    """Loopback names, plus ``bind_host`` when it names one address (not every interface)."""
    hosts = list(LOOPBACK_NAMES)
    bind = bind_host.strip("[]").lower()
    if bind not in WILDCARD_BINDS and bind not in hosts:
        hosts.append(bind)
    return hosts


def host_name(header: str) -> str:
    """The name of a Host header, without its port (``[::1]:8000`` is ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    name, _, port = header.rpartition(":")
    if name and port.isdigit():
        try:
            ipaddress.IPv6Address(header)  # a bare IPv6 address has colons but no port
        except ValueError:
            return name
    return header


class HostCheck:
    """Answers 400 to a request whose Host is not allowed (every path but ``/healthz``)."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str]) -> None:
        self.app = app
        self.any = "*" in allowed
        self.allowed = {h.strip("[]").lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.any or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        if host_name(Headers(scope=scope).get("host", "")) in self.allowed:
            await self.app(scope, receive, send)
            return
        response = PlainTextResponse("unknown Host: this job browser answers only to the names in its "
                                     "--allowed-hosts (SKIPLOCK_UI_ALLOWED_HOSTS)\n", 400)
        await response(scope, receive, send)
