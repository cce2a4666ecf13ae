"""The job browser under the attacks found on a local install: DNS rebinding, bad parameters, heavy
list pages, weak tokens, replayed sessions, TLS-terminating proxies."""

from __future__ import annotations

import http.client
import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from starlette.testclient import TestClient

from skiplock import Queue
from skiplock.errors import SkiplockError
from skiplock.ui.app import check_exposure, create_app
from skiplock.ui.auth import SESSION_COOKIE, Auth
from skiplock.ui.headers import HEADERS
from skiplock.ui.hosts import default_allowed_hosts, host_name
from tests.helpers import cli, sql
from tests.ui.conftest import csrf_token, running_ui, ui_client

TOKEN = "t" * 40


# -- DNS rebinding: the Host allow-list ---------------------------------------------------------------


@pytest.mark.parametrize("host, status", [
    ("localhost:8000", 200), ("127.0.0.1:8000", 200), ("[::1]:8000", 200), ("LOCALHOST", 200),
    ("attacker.example:8000", 400), ("localhost.attacker.example", 400), ("127.0.0.1.nip.io", 400), ("", 400),
])
def test_only_allowed_host_names_are_served(client: TestClient, host: str, status: int) -> None:
    response = client.get("/", headers={"host": host})
    assert response.status_code == status
    if status == 400:
        assert "--allowed-hosts" in response.text and response.headers["x-frame-options"] == "DENY"
    assert client.get("/healthz", headers={"host": host}).status_code == 200  # probes use the pod IP


def test_a_rebound_page_cannot_act_either(client: TestClient, dsn: str) -> None:
    job_id = int(sql(dsn, "INSERT INTO skiplock.jobs (type) VALUES ('t') RETURNING id")[0][0])
    token = csrf_token(client)
    refused = client.post(f"/jobs/{job_id}/cancel", data={"csrf": token},
                          headers={"host": "attacker.example:8000", "origin": "http://attacker.example:8000"})
    assert refused.status_code == 400
    assert sql(dsn, "SELECT state::text FROM skiplock.jobs")[0][0] == "pending"


def test_the_allow_list_is_configurable(dsn: str) -> None:
    with ui_client(create_app(dsn, token=TOKEN, allowed_hosts=["jobs.example.com"])) as c:
        assert c.get("/healthz", headers={"host": "anything"}).status_code == 200
        assert c.get("/login", headers={"host": "jobs.example.com"}).status_code == 200
        assert c.get("/login", headers={"host": "localhost"}).status_code == 400
    with pytest.raises(SkiplockError, match="needs authentication"):
        create_app(dsn, allowed_hosts=["*"])
    assert default_allowed_hosts("0.0.0.0") == ["localhost", "127.0.0.1", "::1"]
    assert default_allowed_hosts("10.0.0.7")[-1] == "10.0.0.7"
    assert [host_name(h) for h in ("a.b:80", "[::1]:1", "::1", "a.b")] == ["a.b", "::1", "::1", "a.b"]


# -- bad parameters, unexpected errors ------------------------------------------------------------------


def test_bad_notice_parameters_are_400_with_headers(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    with ui_client(create_app(dsn, token=TOKEN)) as c:
        for page in ("/login?done=retried-all&n=abc", "/login?done=retried-all&n=99999999999999"):
            response = c.get(page)
            assert response.status_code == 400 and "n must be" in response.text
            assert all(response.headers[k] == v for k, v in HEADERS.items())
    with ui_client(create_app(dsn)) as c:
        assert c.get("/jobs?done=retried-all&n=abc").status_code == 400
        assert "Retried 3 dead" in c.get("/jobs?done=retried-all&n=3").text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_an_unexpected_error_is_a_plain_500_with_the_headers(client: TestClient,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: Queue) -> list[dict[str, Any]]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Queue, "stats", broken)
    response = client.get("/")
    assert response.status_code == 500 and "a bug" not in response.text
    assert all(response.headers[k] == v for k, v in HEADERS.items())


# -- list pages load only what they show ----------------------------------------------------------------


async def test_list_pages_never_load_payloads_or_results(client: TestClient, dsn: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    big = "x" * 100_000
    sql(dsn, "INSERT INTO skiplock.jobs (type, payload, result, state, last_error) "
             "SELECT 't', jsonb_build_object('p', %s::text), to_jsonb(%s::text), 'completed', repeat('e', 10000) "
             "FROM generate_series(1, 5)", (big, big))
    async with Queue(dsn) as queue:
        brief = await queue.list_jobs(brief=True)
        full = await queue.list_jobs(limit=1)
    assert all(j.payload is None and j.result is None and len(j.last_error or "") == 4000 for j in brief)
    assert full[0].result == big and len(full[0].last_error or "") == 10_000
    calls: list[dict[str, Any]] = []
    original = Queue.list_jobs

    async def spy(self: Queue, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await original(self, **kwargs)

    monkeypatch.setattr(Queue, "list_jobs", spy)
    page = client.get("/jobs?size=200")
    assert page.status_code == 200 and big not in page.text and calls[0]["brief"] is True


# -- tokens and sessions ---------------------------------------------------------------------------------


def test_short_tokens_are_refused_off_loopback() -> None:
    check_exposure(Auth(token="short"), "127.0.0.1")  # a local tool may use any token
    check_exposure(Auth(token="x" * 32), "0.0.0.0")
    with pytest.raises(SkiplockError, match="5-character SKIPLOCK_UI_TOKEN: off loopback it must have at least 32"):
        check_exposure(Auth(token="short"), "0.0.0.0")


def test_the_cli_refuses_a_short_token_in_one_line(dsn: str) -> None:
    result = cli("ui", "--host", "0.0.0.0", dsn=dsn, env={"SKIPLOCK_UI_TOKEN": "guessable"})
    assert result.returncode == 1 and "at least 32" in result.stderr and "Traceback" not in result.stderr


def _login(c: TestClient) -> str:
    response = c.post("/login", data={"csrf": csrf_token(c, "/login"), "token": TOKEN, "next": "/"})
    assert response.status_code == 303
    cookie = re.search(f"{SESSION_COOKIE}=([^;]+)", response.headers["set-cookie"])
    assert cookie
    return cookie.group(1)


def _as(c: TestClient, session: str) -> TestClient:
    """The client holding exactly this session cookie (and its CSRF cookie)."""
    browser = c.cookies.get("skiplock_csrf")
    c.cookies.clear()
    if browser:
        c.cookies.set("skiplock_csrf", browser)
    c.cookies.set(SESSION_COOKIE, session)
    return c


def test_each_login_is_a_new_session_and_logout_revokes_it(dsn: str) -> None:
    with ui_client(create_app(dsn, token=TOKEN)) as c:
        first, second = _login(c), _login(c)
        assert first != second and len(first) >= 40
        assert TOKEN not in first and first.encode().hex() not in str(sql(dsn, "SELECT * FROM skiplock.ui_sessions"))
        assert _as(c, first).get("/").status_code == 200
        assert _as(c, first).post("/logout", data={"csrf": csrf_token(c)}).status_code == 303
        assert _as(c, first).get("/").status_code == 303  # replayed after logout: refused
        assert _as(c, second).get("/").status_code == 200  # the other login lives on
        sql(dsn, "UPDATE skiplock.ui_sessions SET expires_at = now() - interval '1 second'")
        assert c.get("/").status_code == 303
    with ui_client(create_app(dsn, token=TOKEN)) as replica:  # another replica knows the session
        third = _login(replica)
        with ui_client(create_app(dsn, token=TOKEN)) as other:
            assert _as(other, third).get("/").status_code == 200
        with ui_client(create_app(dsn, token=TOKEN + "-rotated")) as rotated:  # a new token ends it
            assert _as(rotated, third).get("/").status_code == 303


# -- TLS-terminating proxies: Secure follows --forwarded-allow-ips ---------------------------------------


def _login_over_proxy(url: str) -> str:
    """Log in as a browser behind a TLS-terminating proxy would; returns the session's Set-Cookie."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port)
    proxied = {"X-Forwarded-Proto": "https", "Host": "localhost"}
    conn.request("GET", "/login", headers=proxied)
    page = conn.getresponse()
    body = page.read().decode()
    browser = re.search(r"skiplock_csrf=([0-9a-f]+)", page.getheader("set-cookie") or "")
    form = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', body)
    assert browser and form, body
    conn.request("POST", "/login", body=urlencode({"csrf": form.group(1), "token": TOKEN, "next": "/"}),
                 headers={**proxied, "Content-Type": "application/x-www-form-urlencoded",
                          "Cookie": f"skiplock_csrf={browser.group(1)}"})
    response = conn.getresponse()
    response.read()
    assert response.status == 303
    return next(v for k, v in response.getheaders() if k.lower() == "set-cookie" and SESSION_COOKIE in v)


@pytest.mark.parametrize("trusted, secure", [("127.0.0.1", True), ("192.0.2.1", False)])
def test_cookies_are_secure_behind_a_trusted_tls_proxy(dsn: str, tmp_path: Path, trusted: str, secure: bool) -> None:
    with running_ui(dsn, tmp_path / "ui.log", "--forwarded-allow-ips", trusted,
                    env={"SKIPLOCK_UI_TOKEN": TOKEN}) as url:
        cookie = _login_over_proxy(url)
    assert ("secure" in cookie.lower()) is secure, cookie
