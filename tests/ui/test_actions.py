"""The POST actions: CSRF protection, retry, cancel, retry-all with confirmation, schedules."""

from __future__ import annotations

import psycopg
import pytest
from starlette.testclient import TestClient

from skiplock import sync as skiplock_sync
from tests.helpers import cli, sql
from tests.ui.conftest import csrf_token


def _enqueue(dsn: str, jobs: list[dict[str, object]]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return skiplock_sync.enqueue_many(conn, jobs)


def _state(dsn: str, job_id: int) -> str:
    return str(sql(dsn, "SELECT state::text FROM skiplock.jobs WHERE id = %s", (job_id,))[0][0])


def _dead(dsn: str, n: int, queue: str = "default") -> list[int]:
    ids = _enqueue(dsn, [{"type": "t", "queue": queue}] * n)
    sql(dsn, "UPDATE skiplock.jobs SET state = 'dead', attempts = max_attempts, finished_at = now(), "
             "last_error = 'boom' WHERE id = ANY(%s)", (ids,))
    return ids


@pytest.mark.parametrize("tamper", ["no token", "wrong token", "no cookie", "other origin"])
def test_posts_without_a_valid_csrf_token_are_refused(client: TestClient, dsn: str, tamper: str) -> None:
    (job_id,) = _dead(dsn, 1)
    token = csrf_token(client)
    form = {} if tamper == "no token" else {"csrf": "0" * 64 if tamper == "wrong token" else token}
    headers = {"origin": "http://evil.example"} if tamper == "other origin" else {}
    if tamper == "no cookie":
        client.cookies.clear()
    response = client.post(f"/jobs/{job_id}/retry", data=form, headers=headers)
    assert response.status_code == 403
    assert _state(dsn, job_id) == "dead"


def test_a_token_from_another_browser_does_not_fit(client: TestClient, dsn: str) -> None:
    (job_id,) = _dead(dsn, 1)
    token = csrf_token(client)
    client.cookies.clear()
    csrf_token(client)  # a new browser id: the old token was signed for the old one
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf": token}).status_code == 403


def test_retry_a_dead_job(client: TestClient, dsn: str) -> None:
    (job_id,) = _dead(dsn, 1)
    response = client.post(f"/jobs/{job_id}/retry", data={"csrf": csrf_token(client)},
                           headers={"origin": "http://localhost"})
    assert response.status_code == 303 and response.headers["location"] == f"/jobs/{job_id}?done=retried"
    assert _state(dsn, job_id) == "pending"
    assert "Job retried" in client.get(response.headers["location"]).text


def test_retry_of_a_pending_job_explains_why_not(client: TestClient, dsn: str) -> None:
    (job_id,) = _enqueue(dsn, [{"type": "t"}])
    response = client.post(f"/jobs/{job_id}/retry", data={"csrf": csrf_token(client)})
    assert response.status_code == 409 and "only finished or waiting jobs can be retried" in response.text


def test_cancel(client: TestClient, dsn: str) -> None:
    (job_id,) = _enqueue(dsn, [{"type": "t"}])
    response = client.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf_token(client)})
    assert response.headers["location"] == f"/jobs/{job_id}?done=cancelled"
    assert _state(dsn, job_id) == "cancelled"
    assert client.post("/jobs/999999/cancel", data={"csrf": csrf_token(client)}).status_code == 404


def test_retry_all_dead_asks_for_confirmation_first(client: TestClient, dsn: str) -> None:
    mail = _dead(dsn, 3, "mail")
    media = _dead(dsn, 2, "media")
    token = csrf_token(client, "/jobs?state=dead&queue=mail")
    ask = client.post("/jobs/retry-dead", data={"csrf": token, "queue": "mail"})
    assert ask.status_code == 200 and "<strong>3</strong> dead jobs" in ask.text and "Retry 3 jobs" in ask.text
    assert {_state(dsn, i) for i in mail} == {"dead"}
    done = client.post("/jobs/retry-dead", data={"csrf": token, "queue": "mail", "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["location"] == "/jobs?state=dead&queue=mail&done=retried-all&n=3"
    assert "Retried 3 dead job(s)." in client.get(done.headers["location"]).text
    assert {_state(dsn, i) for i in mail} == {"pending"} and {_state(dsn, i) for i in media} == {"dead"}
    everything = client.post("/jobs/retry-dead", data={"csrf": token, "queue": "", "confirm": "yes"})
    assert everything.headers["location"].endswith("n=2")
    assert "There are no dead jobs" in client.post("/jobs/retry-dead", data={"csrf": token}).text


def test_pause_and_resume_a_schedule(client: TestClient, dsn: str) -> None:
    assert cli("schedule", "add", "tick", "--every", "1h", "--type", "t", dsn=dsn).returncode == 0
    token = csrf_token(client)
    paused = client.post("/schedules/pause", data={"csrf": token, "name": "tick"})
    assert paused.headers["location"] == "/?done=paused"
    assert sql(dsn, "SELECT paused FROM skiplock.schedules")[0][0] is True
    page = client.get("/").text
    assert 'action="/schedules/resume"' in page and "Schedule paused." not in page
    client.post("/schedules/resume", data={"csrf": token, "name": "tick"})
    assert sql(dsn, "SELECT paused FROM skiplock.schedules")[0][0] is False
    assert client.post("/schedules/pause", data={"csrf": token, "name": "nope"}).status_code == 404
    assert client.post("/schedules/pause", data={"csrf": token}).status_code == 400
