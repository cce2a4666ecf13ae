"""Token and basic auth, login/logout, and the refusal to serve beyond loopback without either."""

from __future__ import annotations

import argparse
import base64

import pytest
from starlette.testclient import TestClient

from skiplock.errors import SkiplockError
from skiplock.ui.app import create_app, run_ui
from skiplock.ui.auth import Auth, is_loopback
from tests.helpers import cli
from tests.ui.conftest import csrf_token, ui_client

TOKEN = "tok-0123456789abcdef"


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_token_via_header_or_login_cookie(dsn: str) -> None:
    with ui_client(create_app(dsn, token=TOKEN)) as c:
        refused = c.get("/jobs?state=dead")
        assert refused.status_code == 303
        assert refused.headers["location"] == "/login?next=%2Fjobs%3Fstate%3Ddead"
        assert c.post("/jobs/retry-dead").status_code == 401
        assert c.get("/", headers={"authorization": "Bearer wrong"}).status_code == 303
        assert c.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/healthz").text == "ok\n" and c.get("/static/style.css").status_code == 200

        token = csrf_token(c, "/login")
        wrong = c.post("/login", data={"csrf": token, "token": "nope", "next": "/jobs"})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
        ok = c.post("/login", data={"csrf": token, "token": TOKEN, "next": "/jobs?state=dead"})
        assert ok.status_code == 303 and ok.headers["location"] == "/jobs?state=dead"
        assert "httponly" in ok.headers["set-cookie"].lower() and "samesite=strict" in ok.headers["set-cookie"].lower()
        assert c.get("/").status_code == 200
        assert "Log out" in c.get("/").text

        out = c.post("/logout", data={"csrf": token})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert c.get("/").status_code == 303


def test_login_never_redirects_off_site(dsn: str) -> None:
    with ui_client(create_app(dsn, token=TOKEN)) as c:
        token = csrf_token(c, "/login")
        for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", ""):
            response = c.post("/login", data={"csrf": token, "token": TOKEN, "next": target})
            assert response.headers["location"] == "/", target


def test_login_page_without_a_token_configured_goes_home(client: TestClient) -> None:
    assert client.get("/login").headers["location"] == "/"


def test_basic_auth(dsn: str) -> None:
    with ui_client(create_app(dsn, user="ops", password="pa:ss word")) as c:
        refused = c.get("/")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic ")
        assert c.get("/", headers=_basic("ops", "wrong")).status_code == 401
        assert c.get("/", headers=_basic("admin", "pa:ss word")).status_code == 401
        assert c.get("/", headers={"authorization": "Basic !!!"}).status_code == 401
        assert c.get("/", headers=_basic("ops", "pa:ss word")).status_code == 200


def test_token_and_basic_together(dsn: str) -> None:
    with ui_client(create_app(dsn, token=TOKEN, user="ops", password="pw")) as c:
        refused = c.get("/")
        assert refused.status_code == 401 and "/login" in refused.text
        assert c.get("/", headers=_basic("ops", "pw")).status_code == 200
        assert c.get("/", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_credentials_must_be_complete() -> None:
    with pytest.raises(SkiplockError, match="both"):
        Auth(user="ops")
    with pytest.raises(SkiplockError, match="empty"):
        Auth(token="")


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "10.0.0.5", "example.com", "localhost.evil.example"]))


def test_run_ui_refuses_a_public_address_without_credentials(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SKIPLOCK_UI_TOKEN", "SKIPLOCK_UI_USER", "SKIPLOCK_UI_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(host="0.0.0.0", port=0, database_url=dsn, log_level="info")
    with pytest.raises(SkiplockError, match="without authentication"):
        run_ui(args)


def test_the_cli_refuses_a_public_address_in_one_line(dsn: str) -> None:
    result = cli("ui", "--host", "0.0.0.0", dsn=dsn, env={"SKIPLOCK_UI_TOKEN": "", "SKIPLOCK_UI_USER": ""})
    assert result.returncode == 1
    assert "refusing to serve the UI on 0.0.0.0 without authentication" in result.stderr
    assert "Traceback" not in result.stderr
    half = cli("ui", dsn=dsn, env={"SKIPLOCK_UI_USER": "ops"})
    assert half.returncode == 1 and "SKIPLOCK_UI_PASSWORD" in half.stderr
