"""The POST actions (each CSRF-checked): retry, cancel, retry every dead job, the bulk actions on a
filtered list (cancel, purge or retry every job that matches, after a page that says how many),
pause/resume a schedule, token login and logout. Each ends in a redirect (303) to the page it came from."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import states
from . import csrf
from .auth import SESSION_COOKIE, SESSION_SECONDS
from .pages import BadRequest, auth_of, queue_of, render
from .views import FILTER_FIELDS, job_filter

FAILED_LOGIN_DELAY = 0.5


def _redirect(path: str, **params: str | int) -> Response:
    return RedirectResponse(path + (f"?{urlencode(params)}" if params else ""), 303)


async def retry(request: Request) -> Response:
    await csrf.check(request, auth_of(request))
    job_id: int = request.path_params["job_id"]
    await queue_of(request).retry(job_id)
    return _redirect(f"/jobs/{job_id}", done="retried")


async def cancel(request: Request) -> Response:
    await csrf.check(request, auth_of(request))
    job_id: int = request.path_params["job_id"]
    state = await queue_of(request).cancel(job_id)
    return _redirect(f"/jobs/{job_id}", done="cancel-requested" if state == "running" else "cancelled")


async def retry_dead(request: Request) -> Response:
    """Asks for confirmation first (a page saying how many jobs), then retries them all."""
    form = await csrf.check(request, auth_of(request))
    queue = form.get("queue", "").strip() or None
    q = queue_of(request)
    if form.get("confirm") != "yes":
        stats = await q.stats()
        count = sum(int(s["jobs"]) for s in stats
                    if s["state"] == "dead" and (queue is None or s["queue"] == queue))
        return render(request, "confirm.html", {"queue": queue, "count": count})
    retried = await q.retry_dead(queue)
    back = {"state": "dead", **({"queue": queue} if queue else {})}
    return _redirect("/jobs", **back, done="retried-all", n=retried)


BULK = {
    "cancel": ("Cancel", "Jobs that have not started never run; running ones are asked to stop.",
               states.CANCELLABLE),
    "purge": ("Delete", "Finished and waiting jobs are deleted (running ones are left alone); waiting jobs "
              "that others depend on cancel those first.", states.PURGEABLE | states.EXPIRABLE),
    "retry": ("Retry", "Finished and waiting jobs go back to pending with fresh attempts; workers start them at "
              "once.", states.RETRYABLE),
}


async def bulk(request: Request) -> Response:
    """Cancel, purge or retry every job the list's filters match: a page says how many first."""
    form = await csrf.check(request, auth_of(request))
    action = str(form.get("action", ""))
    if action not in BULK:
        raise BadRequest(f"unknown bulk action {action!r}: one of {', '.join(BULK)}")
    fields = {k: str(form.get(k, "")).strip() or None for k in FILTER_FIELDS}
    where = job_filter(fields)
    if not any(fields.values()):
        raise BadRequest("filter the list first (state, queue, type, tenant or label): a bulk action never "
                         "takes every job")
    verb, explanation, allowed = BULK[action]
    scope = where.narrowed(states.ordered(allowed))
    q = queue_of(request)
    if form.get("confirm") != "yes":
        count = await q.count_jobs(scope, hot_only=action != "purge") if scope.states else 0
        return render(request, "bulk.html", {"action": action, "verb": verb, "explanation": explanation,
                                             "count": count, "fields": fields, "described": where.describe()})
    if not scope.states:
        done = 0
    elif action == "cancel":
        done = await q.cancel_jobs(where)
    elif action == "purge":
        done = await q.purge_jobs(where)
    else:
        done = await q.retry_jobs(where)
    back = {k: v for k, v in fields.items() if v}
    return _redirect("/jobs", **back, done=f"bulk-{action}", n=done)


async def _set_paused(request: Request, paused: bool) -> Response:
    form = await csrf.check(request, auth_of(request))
    name = form.get("name", "")
    if not name:
        raise BadRequest("no schedule name given")
    await queue_of(request).pause_schedule(name, paused)
    return _redirect("/", done="paused" if paused else "resumed")


async def pause_schedule(request: Request) -> Response:
    return await _set_paused(request, True)


async def resume_schedule(request: Request) -> Response:
    return await _set_paused(request, False)


def safe_next(target: str | None) -> str:
    """Only a path on this site (no scheme, no host, no ``//`` or backslash tricks)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def login_page(request: Request) -> Response:
    if auth_of(request).token is None:
        return _redirect("/")
    return render(request, "login.html", {"next": safe_next(request.query_params.get("next")), "error": None})


async def login(request: Request) -> Response:
    auth = auth_of(request)
    form = await csrf.check(request, auth)
    target = safe_next(form.get("next"))
    if not auth.check_token(form.get("token", "").strip()):
        await asyncio.sleep(FAILED_LOGIN_DELAY)
        return render(request, "login.html", {"next": target, "error": "Wrong token."}, 401)
    response = RedirectResponse(target, 303)
    # Secure when the browser came over https, as uvicorn saw it: directly, or through a proxy
    # whose X-Forwarded-Proto it trusts (--forwarded-allow-ips).
    response.set_cookie(SESSION_COOKIE, await auth.start_session(queue_of(request).db), max_age=SESSION_SECONDS,
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


async def logout(request: Request) -> Response:
    auth = auth_of(request)
    await csrf.check(request, auth)
    await auth.end_session(queue_of(request).db, request.cookies.get(SESSION_COOKIE, ""))
    response = RedirectResponse("/login", 303)
    response.delete_cookie(SESSION_COOKIE, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response
