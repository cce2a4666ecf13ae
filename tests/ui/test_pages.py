"""The pages against a real database: overview, job list (filters, paging), job detail, escaping."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from starlette.testclient import TestClient

from skiplock import sync as skiplock_sync
from tests.helpers import cli, sql

XSS = "<script>alert('x')</script>"


def _enqueue(dsn: str, jobs: list[dict[str, Any]]) -> list[int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return skiplock_sync.enqueue_many(conn, jobs)


def _kill(dsn: str, ids: list[int], error: str = "boom") -> None:
    sql(dsn, "UPDATE skiplock.jobs SET state = 'dead', attempts = max_attempts, last_error = %s, "
             "finished_at = now() WHERE id = ANY(%s)", (error, ids))


def _job_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<td class="n"><a href="/jobs/(\d+)">', html)]


def test_overview_shows_each_queue_schedules_and_limits(client: TestClient, dsn: str) -> None:
    ids = _enqueue(dsn, [{"type": "a", "queue": "mail"}] * 3 + [{"type": "b", "queue": "media"}] * 2)
    _kill(dsn, ids[:1])
    assert cli("schedule", "add", "nightly", "--cron", "0 3 * * *", "--type", "report", dsn=dsn).returncode == 0
    assert cli("limits", "set", "b", "--concurrency", "4", dsn=dsn).returncode == 0
    page = client.get("/")
    assert page.status_code == 200
    text = page.text
    assert 'href="/jobs?queue=mail"' in text and 'href="/jobs?queue=media"' in text
    assert 'href="/jobs?queue=mail&amp;state=dead">1</a>' in text
    assert 'href="/jobs?queue=mail&amp;state=pending">2</a>' in text
    assert "nightly" in text and "0 3 * * *" in text and 'action="/schedules/pause"' in text
    assert "<td>b</td>" in text and "all tenants together" in text


def test_overview_of_an_empty_database(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert "No jobs yet." in page.text and "No schedules." in page.text


def test_payloads_errors_and_names_render_as_text(client: TestClient, dsn: str) -> None:
    (job_id,) = _enqueue(dsn, [{"type": f"t{XSS}", "tenant": f"<b>{XSS}", "payload": {"html": XSS},
                                "labels": {"x": XSS}}])
    sql(dsn, "UPDATE skiplock.jobs SET result = %s::jsonb, last_error = %s WHERE id = %s",
        ('{"r": "<img src=x onerror=alert(1)>"}', f"Error: {XSS}", job_id))
    for url in (f"/jobs/{job_id}", "/jobs", "/jobs?type=" + f"t{XSS}", "/"):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "<script>" not in page.text and "<img" not in page.text and "<b>" not in page.text, url
    detail = client.get(f"/jobs/{job_id}").text
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail


def test_security_headers(client: TestClient) -> None:
    headers = client.get("/").headers
    assert "script-src" not in headers["content-security-policy"]  # default-src 'none': no scripts at all
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["cache-control"] == "no-store"
    assert client.get("/static/style.css").status_code == 200


def test_job_list_pages_newest_first(client: TestClient, dsn: str) -> None:
    ids = _enqueue(dsn, [{"type": "p", "payload": {"i": i}} for i in range(120)])
    first = client.get("/jobs")
    assert _job_ids(first.text) == ids[::-1][:50]
    assert 'href="/jobs?page=2" rel="next"' in first.text and 'rel="prev"' not in first.text
    second = client.get("/jobs?page=2")
    assert _job_ids(second.text) == ids[::-1][50:100]
    assert 'href="/jobs" rel="prev"' in second.text
    last = client.get("/jobs?page=3")
    assert _job_ids(last.text) == ids[::-1][100:] and 'rel="next"' not in last.text
    assert "101\u2013120" in last.text
    assert _job_ids(client.get("/jobs?page=9").text) == []
    small = client.get("/jobs?size=20&page=2&type=p")
    assert _job_ids(small.text) == ids[::-1][20:40]
    assert 'href="/jobs?type=p&amp;size=20&amp;page=3" rel="next"' in small.text
    assert 'href="/jobs?type=p&amp;size=20" rel="prev"' in small.text


def test_job_list_filters(client: TestClient, dsn: str) -> None:
    mail = _enqueue(dsn, [{"type": "send", "queue": "mail", "tenant": "acme"}] * 2)
    other = _enqueue(dsn, [{"type": "send", "queue": "mail", "tenant": "globex"},
                           {"type": "resize", "queue": "media", "tenant": "acme"}])
    _kill(dsn, [mail[0], other[1]])
    assert _job_ids(client.get("/jobs?queue=mail").text) == [other[0], mail[1], mail[0]]
    assert _job_ids(client.get("/jobs?tenant=acme&type=send").text) == [mail[1], mail[0]]
    assert _job_ids(client.get("/jobs?state=dead").text) == [other[1], mail[0]]
    assert _job_ids(client.get("/jobs?state=dead&queue=mail").text) == [mail[0]]
    assert _job_ids(client.get("/jobs?state=&queue=&type=&tenant=").text) == [*other[::-1], *mail[::-1]]
    dead_page = client.get("/jobs?state=dead&queue=mail").text
    assert "1 dead job in queue mail" in dead_page and 'action="/jobs/retry-dead"' in dead_page
    assert 'action="/jobs/retry-dead"' not in client.get("/jobs?state=pending").text


def test_bad_parameters_are_400_pages(client: TestClient) -> None:
    for query in ("state=nope", "page=0", "page=x", "size=7", "size=-1"):
        page = client.get(f"/jobs?{query}")
        assert page.status_code == 400, query
        assert "Error 400" in page.text
    assert client.get("/jobs/12345").status_code == 404
    assert client.get("/nowhere").status_code == 404


def test_job_detail_timeline_and_dependencies(client: TestClient, dsn: str) -> None:
    (parent,) = _enqueue(dsn, [{"type": "extract", "payload": {"file": "a.csv"}}])
    (child,) = _enqueue(dsn, [{"type": "load", "depends_on": [parent]}])
    _kill(dsn, [parent], "ValueError: bad row 7\nTraceback follows")
    text = client.get(f"/jobs/{parent}").text
    assert "extract" in text and "&#34;file&#34;: &#34;a.csv&#34;" in text
    assert f'<a href="/jobs/{child}">#{child}</a> load' in text
    assert "Last error: ValueError: bad row 7" in text and "Traceback follows" in text
    for label in ("created", "run at", "finished", "updated"):
        assert f'<span class="label">{label}</span>' in text
    assert f'action="/jobs/{parent}/retry"' in text and f'action="/jobs/{parent}/cancel"' not in text
    child_page = client.get(f"/jobs/{child}").text
    assert f'<a href="/jobs/{parent}">#{parent}</a> extract' in child_page
    assert f'action="/jobs/{child}/cancel"' in child_page and 'http-equiv="refresh"' not in child_page
    assert 'http-equiv="refresh"' in client.get(f"/jobs/{_enqueue(dsn, [{'type': 'x'}])[0]}").text
