"""Hostile input at the command line, each answered with one clear line (exit 1, or 2 for usage),
never a traceback, and never half done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import cli, sql


def _fails(*args: str, dsn: str, code: int = 1, env: dict[str, str] | None = None) -> str:
    result = cli(*args, dsn=dsn, env=env)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def _count(dsn: str) -> int:
    return int(sql(dsn, "SELECT count(*) FROM skiplock.jobs")[0][0])


def _nested(depth: int) -> object:
    value: object = {}
    for _ in range(depth):
        value = [value]
    return value


# -- enqueue --from-file: all or nothing, with the line -----------------------------------------------------


def test_a_file_is_all_or_nothing_and_names_the_line_that_failed(dsn: str, tmp_path: Path) -> None:
    parent = int(sql(dsn, "INSERT INTO skiplock.jobs (type) VALUES ('p') RETURNING id")[0][0])
    good = [json.dumps({"type": "t", "payload": {"i": i}, "depends_on": [parent] if i % 7 == 0 else []})
            for i in range(5000)]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join([*good, json.dumps({"type": "t", "depends_on": [parent + 10**9]}), *good]) + "\n")
    message = _fails("enqueue", "--from-file", str(path), "--batch-size", "1000", dsn=dsn)
    assert f"jobs.jsonl:5001: depends_on names unknown job ids: [{parent + 10**9}]" in message
    assert "nothing was enqueued (a file is all or nothing: 0 of 10001 jobs, 5000 had been sent)" in message
    assert _count(dsn) == 1  # the parent alone
    path.write_text("\n".join([*good, *good]) + "\n")
    result = cli("enqueue", "--from-file", str(path), dsn=dsn)
    assert result.returncode == 0 and result.stdout.strip() == "10000" and _count(dsn) == 10_001


@pytest.mark.parametrize("line, message", [
    (b'{"type": "t", "payload": "caf\xe9"}', "jobs.jsonl:2: not valid UTF-8 (byte 0xe9 at column 30)"),
    (b"[" * 100_000, "jobs.jsonl:2: JSON nested too deeply"),
    (json.dumps({"type": "t", "payload": _nested(150)}).encode(),
     "jobs.jsonl:2: payload nests objects and arrays more than 100 levels deep"),
    (b'"just a string"', "jobs.jsonl:2: each line must be a JSON object"),
])
def test_bad_lines_get_their_number(dsn: str, tmp_path: Path, line: bytes, message: str) -> None:
    path = tmp_path / "jobs.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"type": "t"}\n' + line + b"\n")  # a BOM on line 1 is fine
    assert message in _fails("enqueue", "--from-file", str(path), dsn=dsn)
    assert _count(dsn) == 0


# -- payload depth ----------------------------------------------------------------------------------------


def test_deep_payloads_are_refused_at_enqueue(dsn: str) -> None:
    message = _fails("enqueue", "t", "--payload", json.dumps(_nested(900)), dsn=dsn)
    assert "payload nests objects and arrays more than 100 levels deep" in message
    ok = cli("enqueue", "t", "--payload", json.dumps(_nested(99)), dsn=dsn)
    assert ok.returncode == 0


def test_a_deep_value_stored_by_other_means_cannot_break_the_listings(dsn: str) -> None:
    deep = json.dumps(_nested(900))
    job_id = sql(dsn, "INSERT INTO skiplock.jobs (type, payload, result) VALUES ('t', %s, %s) RETURNING id",
                 (deep, deep))[0][0]
    for args in (("jobs", "show", str(job_id)), ("jobs", "show", str(job_id), "--json"), ("jobs", "list", "--json"),
                 ("jobs", "list")):
        result = cli(*args, dsn=dsn)
        assert result.returncode == 0 and "Traceback" not in result.stderr, (args, result.stderr)
        if "show" in args or "--json" in args:
            assert "nested more than 100 levels deep" in result.stdout


# -- schedules, handler modules ---------------------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (("--cron", "0 0 31 2 *"), "cron: cron expression '0 0 31 2 *' never fires (no such date)"),
    (("--every", "99999999d"), "every: Input should be less than or equal to 316224000"),
])
def test_schedules_that_cannot_be_get_one_line(dsn: str, args: tuple[str, ...], message: str) -> None:
    assert message in _fails("schedule", "add", "s", "--type", "t", *args, dsn=dsn)
    assert sql(dsn, "SELECT count(*) FROM skiplock.schedules")[0][0] == 0


@pytest.mark.parametrize("source, message", [
    ("import os\n\nraise RuntimeError('missing setting: API_KEY')\n",
     "handler module 'broken_handlers' failed while importing: RuntimeError: missing setting: API_KEY "
     "(%s/broken_handlers.py:3)"),
    ("def f(:\n", "handler module 'broken_handlers' failed while importing: SyntaxError: "),
])
def test_a_handler_module_that_raises_at_import(dsn: str, tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "broken_handlers.py").write_text(source)
    result = _fails("worker", "--handlers", "broken_handlers:jobs", dsn=dsn, env={"PYTHONPATH": str(tmp_path)})
    assert (message % tmp_path if "%s" in message else message) in result


# -- terminal output ----------------------------------------------------------------------------------------


def test_control_characters_are_escaped_on_the_terminal(dsn: str) -> None:
    evil = "evil\x1b[2J\x1b]0;pwned\x07\r\u202e"
    job_id = cli("enqueue", evil, "--queue", evil, "--tenant", evil, dsn=dsn).stdout.strip()
    assert cli("limits", "set", evil, "--concurrency", "1", dsn=dsn).returncode == 0
    assert cli("schedule", "add", evil, "--type", evil, "--every", "1h", dsn=dsn).returncode == 0
    outputs = [cli(*args, dsn=dsn) for args in (("jobs", "list"), ("jobs", "show", job_id), ("stats",),
                                                 ("limits", "list"), ("schedule", "list"))]
    for out in outputs:
        assert out.returncode == 0 and "\x1b" not in out.stdout and "\r" not in out.stdout, out.stdout
        assert "\u202e" not in out.stdout and "evil\\x1b[2J\\x1b]0;pwned\\x07\\x0d\\u202e" in out.stdout, out.stdout
    shown = json.loads(cli("jobs", "show", job_id, "--json", dsn=dsn).stdout)  # JSON keeps the exact value
    assert shown["type"] == evil
