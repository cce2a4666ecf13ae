"""The job browser in a real browser (Debian's chromium driven by Playwright) against ``skiplock ui``
and ``skiplock worker`` running as real processes: open the overview, filter to the dead jobs, open
one, retry it, and watch a worker complete it. Screenshots go to the test's tmp dir, and to
``$SKIPLOCK_UI_SCREENSHOTS`` when set (``SKIPLOCK_UI_SCREENSHOTS=docs/img`` refreshes the docs')."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from skiplock import sync as skiplock_sync
from tests.fixtures.jobs_fixture import ensure_table
from tests.helpers import cli, spawn_worker, sql
from tests.ship.tools import missing
from tests.ui.conftest import running_ui
from tests.ui.conftest import stop as _stop

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = "<script>document.title = 'pwned'</script>"

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def _browser_installed() -> None:
    """Chromium and playwright: the test skips without them, and fails under SKIPLOCK_REQUIRE_TOOLS=1
    (tools/test.sh, CI) so that CI cannot pass with the browser tier skipped."""
    if not CHROMIUM.exists():
        missing(f"Debian's chromium ({CHROMIUM})", "the Debian package chromium, by tools/setup.sh --test as root")
    if importlib.util.find_spec("playwright") is None:
        missing("playwright (pip)", "the test extra, by tools/setup.sh --test")


def _wait_sql(dsn: str, query: str, expected: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (got := sql(dsn, query)[0][0]) != expected:
        assert time.monotonic() < deadline, f"{query} -> {got}, expected {expected}"
        time.sleep(0.2)


@pytest.fixture
def ui_url(dsn: str, tmp_path: Path) -> Iterator[str]:
    """``skiplock ui`` as a real process on a free loopback port, without credentials."""
    with running_ui(dsn, tmp_path / "ui.log") as url:
        yield url


def _seed(dsn: str) -> int:
    """A queue with some history: completed, pending, scheduled and blocked jobs, a schedule, a
    limit, and two dead jobs in queue "mail"; returns the id of the dead one that will succeed."""
    ensure_table(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        skiplock_sync.enqueue_many(conn, [{"type": "record", "payload": {"n": i}} for i in range(40)])
        skiplock_sync.enqueue_many(conn, [{"type": "record", "queue": "reports", "tenant": t, "payload": {"month": m}}
                                          for t in ("acme", "globex") for m in ("2026-09", "2026-10")])
        fail_first = skiplock_sync.enqueue(conn, "fail_first", {"to": "ada@example.com", "html": XSS}, queue="mail",
                                           max_attempts=1, tenant="acme", labels={"campaign": "welcome"})
        skiplock_sync.enqueue(conn, "fail", {"to": "bob@example.com"}, queue="mail", max_attempts=1)
        later = skiplock_sync.enqueue(conn, "record", {"digest": "weekly"}, queue="reports", delay=3600)
        skiplock_sync.enqueue(conn, "record", {"after": later}, queue="reports", depends_on=[later])
    assert cli("schedule", "add", "nightly-report", "--cron", "0 3 * * *", "--type", "record",
               "--queue", "reports", dsn=dsn).returncode == 0
    assert cli("schedule", "add", "cleanup", "--every", "15m", "--type", "record", dsn=dsn).returncode == 0
    assert cli("limits", "set", "fail_first", "--concurrency", "2", dsn=dsn).returncode == 0
    mailer = spawn_worker(dsn, "--queue", "mail", "--worker-id", "mailer-1")
    try:
        _wait_sql(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'dead'", 2)
    finally:
        _stop(mailer)
    return fail_first


def _shots() -> list[Path]:
    target = os.environ.get("SKIPLOCK_UI_SCREENSHOTS")
    return [Path(target)] if target else []


def test_find_a_dead_job_retry_it_and_see_it_complete(dsn: str, ui_url: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    job_id = _seed(dsn)
    background = spawn_worker(dsn, "--queue", "default", "--queue", "reports", "--worker-id", "worker-a",
                              "--lease", "3")
    mailer = None
    try:
        _wait_sql(dsn, "SELECT count(*) FROM skiplock.jobs WHERE state = 'completed'", 44)
        _wait_sql(dsn, "SELECT count(*) FROM skiplock.workers", 1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 800})

            def shot(name: str) -> None:
                page.screenshot(path=tmp_path / name, full_page=True)
                for folder in _shots():
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copy(tmp_path / name, folder / name)

            page.goto(ui_url + "/")
            expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            dead_card = page.locator("a.card.stat", has_text="dead")
            expect(dead_card.locator(".num")).to_have_text("2")
            expect(page.locator("table.queues")).to_contain_text("mail")
            expect(page.get_by_text("nightly-report")).to_be_visible()
            expect(page.locator("#workers + .scroll")).to_contain_text("worker-a")
            shot("ui-overview.png")

            dead_card.click()
            expect(page).to_have_url(ui_url + "/jobs?state=dead")
            rows = page.locator("table.jobs tbody tr")
            expect(rows).to_have_count(2)
            expect(page.get_by_text("2 dead jobs on the dead-letter list.")).to_be_visible()
            failed = f"RuntimeError: first execution of job {job_id} fails"
            expect(rows.filter(has_text="fail_first")).to_contain_text(failed)
            shot("ui-jobs.png")

            rows.filter(has_text="fail_first").get_by_role("link", name="fail_first").click()
            expect(page).to_have_url(f"{ui_url}/jobs/{job_id}")
            expect(page.locator("h1 .state")).to_have_text("dead")
            expect(page.locator("pre.code").first).to_contain_text(f"first execution of job {job_id} fails")
            expect(page.locator("#payload pre")).to_contain_text(XSS)
            assert page.evaluate("document.querySelectorAll('script').length") == 0
            assert "pwned" not in page.title()
            shot("ui-job.png")

            page.get_by_role("button", name="Retry").click()
            expect(page.get_by_role("status")).to_contain_text("Job retried")
            expect(page.locator("h1 .state")).to_have_text("pending")
            mailer = spawn_worker(dsn, "--queue", "mail", "--worker-id", "mailer-2")
            # The page refreshes itself while the job is pending or running.
            expect(page.locator("h1 .state")).to_have_text("completed", timeout=60_000)
            expect(page.locator("#result pre")).to_contain_text('"runs": 2')
            browser.close()
    finally:
        for proc in (background, mailer):
            if proc is not None:
                _stop(proc)
    assert sql(dsn, "SELECT state::text, attempts FROM skiplock.jobs WHERE id = %s", (job_id,)) == [("completed", 1)]
