"""CSRF protection for every POST: a random per-browser cookie, a form field that must carry that
cookie's signature (which a cross-site page cannot compute), and an Origin check."""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from .auth import Auth

CSRF_COOKIE = "skiplock_csrf"
CSRF_FIELD = "csrf"


class CsrfError(Exception):
    """A POST without a valid CSRF token, or from another origin."""


def browser_id(request: Request) -> tuple[str, bool]:
    """This browser's CSRF cookie value, and whether it is new (must be set on the response)."""
    current = request.cookies.get(CSRF_COOKIE, "")
    if len(current) == 32 and current.isalnum():
        return current, False
    return secrets.token_hex(16), True


def form_token(auth: Auth, browser: str) -> str:
    return auth.sign(f"csrf:{browser}")


def set_cookie(request: Request, response: Response, browser: str) -> None:
    response.set_cookie(CSRF_COOKIE, browser, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")


def same_origin(request: Request) -> bool:
    """No Origin header (older clients, curl) passes; one that names another host does not."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.headers.get("host", "")


async def check(request: Request, auth: Auth) -> dict[str, str]:
    """Validate a POST; returns its form fields (single values). Raises ``CsrfError``."""
    if not same_origin(request):
        raise CsrfError("cross-origin request refused")
    form = await request.form()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    browser = request.cookies.get(CSRF_COOKIE, "")
    given = fields.get(CSRF_FIELD, "")
    if not browser or not hmac.compare_digest(given.encode(), form_token(auth, browser).encode()):
        raise CsrfError("missing or stale form token: reload the page and try again")
    return fields
