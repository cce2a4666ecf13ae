"""Who may use the UI: a token (header or login session) and/or HTTP basic auth credentials.

A token login starts a session: a random cookie per login, of which the database keeps only a
digest (``skiplock.ui_sessions``, so every replica knows it), ended at logout or after
SESSION_SECONDS. The digest is keyed by the credentials: changing one ends every session.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from urllib.parse import quote

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from ..database import Database
from ..errors import DatabaseUnavailable, SkiplockError

SESSION_COOKIE = "skiplock_session"
SESSION_SECONDS = 12 * 3600
OPEN_PATHS = ("/healthz", "/login", "/static/")
MIN_TOKEN_LENGTH = 32  # off loopback: a token anyone who can reach the port may try to guess


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); any other name is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Auth:
    """The configured credentials; with none, every request is let in (loopback only)."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) != (self.password is None):
            raise SkiplockError("basic auth needs both SKIPLOCK_UI_USER and SKIPLOCK_UI_PASSWORD")
        if self.token == "" or self.user == "" or self.password == "":
            raise SkiplockError("UI credentials must not be empty")
        if not self.key:
            object.__setattr__(self, "key", self._derive_key())

    def _derive_key(self) -> bytes:
        """A signing key for cookies: derived from the credentials (so replicas and restarts agree,
        and changing a credential ends every session), random without credentials."""
        if not self.enabled:
            return secrets.token_bytes(32)
        material = "\0".join(["skiplock-ui", self.token or "", self.user or "", self.password or ""])
        return hashlib.sha256(material.encode()).digest()

    @classmethod
    def from_env(cls) -> Auth:
        """``SKIPLOCK_UI_TOKEN``, ``SKIPLOCK_UI_USER`` and ``SKIPLOCK_UI_PASSWORD``."""
        env = os.environ
        return cls(env.get("SKIPLOCK_UI_TOKEN") or None, env.get("SKIPLOCK_UI_USER") or None,
                   env.get("SKIPLOCK_UI_PASSWORD") or None)

    @property
    def enabled(self) -> bool:
        return self.token is not None or self.user is not None

    @property
    def basic(self) -> bool:
        return self.user is not None

    def sign(self, value: str) -> str:
        return hmac.new(self.key, value.encode(), hashlib.sha256).hexdigest()

    def session_digest(self, cookie: str) -> bytes:
        """What the database keeps of a session cookie."""
        return hmac.new(self.key, f"session:{cookie}".encode(), hashlib.sha256).digest()

    async def start_session(self, db: Database) -> str:
        """A new session (after a correct token); returns its cookie, random to this login."""
        cookie = secrets.token_urlsafe(32)
        await db.execute("ui_session_create", {"digest": self.session_digest(cookie), "seconds": SESSION_SECONDS})
        return cookie

    async def end_session(self, db: Database, cookie: str) -> None:
        if cookie:
            await db.execute("ui_session_revoke", {"digest": self.session_digest(cookie)})

    async def session_valid(self, db: Database, cookie: str) -> bool:
        if not cookie or self.token is None:
            return False
        return bool(await db.execute("ui_session_valid", {"digest": self.session_digest(cookie)}))

    def check_token(self, given: str) -> bool:
        return self.token is not None and _same(given, self.token)

    def allows(self, headers: Headers) -> bool:
        """Whether a request's Authorization header carries valid credentials."""
        if not self.enabled:
            return True
        scheme, _, value = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and self.check_token(value.strip()):
            return True
        return scheme.lower() == "basic" and self.basic and self._check_basic(value.strip())

    def _check_basic(self, value: str) -> bool:
        try:
            user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        # Both comparisons always run: no early exit that tells a right user from a wrong one.
        ok_user = _same(user, self.user or "")
        ok_password = _same(password, self.password or "")
        return bool(sep) and ok_user and ok_password


class AuthMiddleware:
    """Refuse unauthenticated requests: a basic-auth challenge where basic auth is configured,
    else a redirect to the token login page (pages) or a plain 401."""

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app, self.auth = app, auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.auth.enabled or scope["path"].startswith(OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        conn = HTTPConnection(scope)
        try:
            allowed = self.auth.allows(conn.headers) or await self.auth.session_valid(
                scope["app"].state.queue.db, conn.cookies.get(SESSION_COOKIE, ""))
        except DatabaseUnavailable:
            await PlainTextResponse("the database is unavailable: try again shortly\n", 503)(scope, receive, send)
            return
        if allowed:
            await self.app(scope, receive, send)
            return
        await self._refuse(conn)(scope, receive, send)

    def _refuse(self, conn: HTTPConnection) -> Response:
        if self.auth.basic:
            hint = " or log in with the token at /login" if self.auth.token else ""
            return PlainTextResponse(f"authentication required{hint}\n", 401,
                                     headers={"WWW-Authenticate": 'Basic realm="skiplock", charset="UTF-8"'})
        if conn.scope["method"] == "GET":
            target = conn.url.path + (f"?{conn.url.query}" if conn.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", 303)
        return PlainTextResponse("authentication required\n", 401)
