"""Rendering shared by the handlers: templates, the CSRF cookie, notices, request parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from .. import __version__
from ..queue import Queue
from . import csrf
from .auth import Auth
from .format import FILTERS

HERE = Path(__file__).resolve().parent
NOTICES = {
    "retried": "Job retried: it will run again with fresh attempts.",
    "cancelled": "Job cancelled.",
    "cancel-requested": "Cancel requested: the running handler has been asked to stop.",
    "retried-all": "Retried {n} dead job(s).",
    "bulk-cancel": "Cancelled {n} job(s) (running ones were asked to stop).",
    "bulk-purge": "Deleted {n} job(s).",
    "bulk-retry": "Retried {n} job(s).",
    "paused": "Schedule paused.",
    "resumed": "Schedule resumed.",
}


class BadRequest(ValueError):
    """A query parameter or form field the UI cannot use (HTTP 400)."""


def make_templates() -> Jinja2Templates:
    """Jinja2 with autoescaping on for every template (payloads are user data)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(FILTERS)
    env.globals.update(version=__version__, urlencode=urlencode)
    return Jinja2Templates(env=env)


def queue_of(request: Request) -> Queue:
    q: Queue = request.app.state.queue
    return q


def auth_of(request: Request) -> Auth:
    a: Auth = request.app.state.auth
    return a


def notice(request: Request) -> str | None:
    """The message of a finished action, named by ``?done=`` (fixed texts only)."""
    text = NOTICES.get(request.query_params.get("done", ""))
    if text is None:
        return None
    return text.format(n=int_param(request, "n", 0))


def int_param(request: Request, name: str, default: int, low: int = 0, high: int = 2**31 - 1) -> int:
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}")
    return value


def nav(request: Request) -> str:
    """Which menu entry the page belongs to."""
    path = request.url.path
    if path == "/":
        return "overview"
    if path == "/jobs" and request.query_params.get("state") == "dead":
        return "dead"
    return "jobs" if path.startswith("/jobs") else ""


def render(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    """Render a page with the CSRF form token (setting this browser's CSRF cookie if new)."""
    auth = auth_of(request)
    browser, new = csrf.browser_id(request)
    if "notice" not in context:
        context = {**context, "notice": notice(request)}  # a bad ?n= is a 400 (whose page has none)
    context = {"token_login": auth.token is not None, "nav": nav(request), **context,
               "csrf": csrf.form_token(auth, browser)}
    templates: Jinja2Templates = request.app.state.templates
    response = templates.TemplateResponse(request, name, context, status_code=status)
    if new:
        csrf.set_cookie(request, response, browser)
    return response
