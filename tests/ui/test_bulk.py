"""The job browser's bulk actions on a filtered list (cancel, retry, delete every job that matches,
after a page that says how many) and its label filter."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.helpers import sql
from tests.ui.conftest import csrf_token
from tests.ui.test_actions import _enqueue, _state


def test_the_list_filters_on_a_label(client: TestClient, dsn: str) -> None:
    prod, dev = _enqueue(dsn, [{"type": "t", "labels": {"env": "prod"}}, {"type": "t", "labels": {"env": "dev"}}])
    page = client.get("/jobs?label=env%3Dprod").text
    assert f'href="/jobs/{prod}"' in page and f'href="/jobs/{dev}"' not in page
    assert 'value="env=prod"' in page and "Delete all" in page
    assert "Delete all" not in client.get("/jobs").text  # no filter: no bulk action offered
    assert client.get("/jobs?label=novalue").status_code == 400


def test_bulk_actions_say_how_many_then_act(client: TestClient, dsn: str) -> None:
    mail = _enqueue(dsn, [{"type": "t", "queue": "mail", "labels": {"env": "prod"}}] * 3)
    other = _enqueue(dsn, [{"type": "t", "queue": "media", "labels": {"env": "prod"}}])
    token = csrf_token(client, "/jobs?queue=mail")
    form = {"csrf": token, "queue": "mail", "label": "env=prod", "action": "cancel"}
    ask = client.post("/jobs/bulk", data=form)
    assert ask.status_code == 200 and "<strong>3</strong> jobs match" in ask.text and "Cancel 3 jobs" in ask.text
    assert {_state(dsn, i) for i in mail} == {"pending"}
    done = client.post("/jobs/bulk", data={**form, "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["location"] == "/jobs?queue=mail&label=env%3Dprod&done=bulk-cancel&n=3"
    assert "Cancelled 3 job(s)" in client.get(done.headers["location"]).text
    assert {_state(dsn, i) for i in mail} == {"cancelled"} and _state(dsn, other[0]) == "pending"
    retried = client.post("/jobs/bulk", data={**form, "action": "retry", "state": "cancelled", "confirm": "yes"})
    assert retried.headers["location"].endswith("n=3") and {_state(dsn, i) for i in mail} == {"pending"}
    deleted = client.post("/jobs/bulk", data={**form, "action": "purge", "confirm": "yes"})
    assert deleted.headers["location"].endswith("n=3")
    assert sql(dsn, "SELECT count(*) FROM skiplock.jobs WHERE queue = 'mail'") == [(0,)]


def test_bulk_actions_refuse_what_they_cannot_use(client: TestClient, dsn: str) -> None:
    (job_id,) = _enqueue(dsn, [{"type": "t"}])
    token = csrf_token(client)
    assert client.post("/jobs/bulk", data={"csrf": token, "action": "cancel"}).status_code == 400  # no filter
    assert client.post("/jobs/bulk", data={"csrf": token, "action": "explode", "queue": "default"}).status_code == 400
    assert client.post("/jobs/bulk", data={"csrf": token, "action": "cancel", "state": "lost"}).status_code == 400
    assert client.post("/jobs/bulk", data={"action": "cancel", "queue": "default", "confirm": "yes"}).status_code == 403
    nothing = client.post("/jobs/bulk", data={"csrf": token, "action": "retry", "state": "running"})
    assert "No job that this action applies to matches" in nothing.text
    assert _state(dsn, job_id) == "pending"
