"""The transitions table is the one source: the SQL, the CLI and UI choices and the docs follow it."""

from __future__ import annotations

import argparse
import re
from importlib import resources

import pytest

from skiplock import sql, states
from skiplock.cli import build_parser
from skiplock.sql import QUERIES
from skiplock.states import Action, State
from tests.helpers import ROOT

STATE_LIST = re.compile(r"'(?:{})'\s*,\s*'".format("|".join(s.value for s in State)))


def test_the_docs_show_the_current_table() -> None:
    doc = (ROOT / "docs" / "state-machine.md").read_text()
    assert states.generated_docs() in doc, "docs/state-machine.md is stale: run python tools/state_diagram.py"


def test_queries_name_state_sets_instead_of_copying_them() -> None:
    text = resources.files("skiplock.sql").joinpath("queries.sql").read_text()
    copies = [m.group(0) for m in STATE_LIST.finditer(text)]
    assert not copies, f"hand-written state lists in queries.sql (use {{{{name}}}}): {copies}"
    assert "{{" not in "".join(QUERIES.values())
    assert "state IN ('scheduled', 'pending', 'retry')" in QUERIES["claim"]
    assert QUERIES["claim"].split("UPDATE")[0] in QUERIES["claim_announce"]  # one claim_next fragment


def test_fragments_are_included_and_an_unknown_one_is_refused() -> None:
    text = ("-- fragment: f\n-- a comment\nSELECT 1 WHERE 'x' IN {{finished}}\n"
            "-- name: q\nSELECT * FROM ({{> f}}) t;\n")
    assert sql._parse(text) == {"q": "SELECT * FROM (SELECT 1 WHERE 'x' IN ('completed', 'dead', 'cancelled')) t"}
    with pytest.raises(KeyError, match="unknown fragment"):
        sql._parse("-- name: q\nSELECT * FROM ({{> nope}}) t;\n")


def _choices(*path: str, dest: str) -> list[str]:
    parser: argparse.ArgumentParser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    action = next(a for a in parser._actions if a.dest == dest)
    return list(action.choices or getattr(action.type, "choices", None) or [])  # list options check in their type


def test_the_cli_and_the_ui_offer_what_the_table_allows() -> None:
    from skiplock.ui import views

    assert _choices("jobs", "list", dest="state") == [s.value for s in State]
    assert set(_choices("jobs", "purge", dest="states")) == {s.value for s in states.FINISHED | states.EXPIRABLE}
    assert set(_choices("jobs", "cancel", dest="states")) == {s.value for s in states.CANCELLABLE}
    assert set(_choices("jobs", "retry", dest="states")) == {s.value for s in states.RETRYABLE}
    assert {s.value for s in states.sources(Action.RETRY, "retry")} == views.RETRYABLE
    assert {s.value for s in states.sources(Action.CANCEL)} == views.CANCELLABLE


def test_the_sets_follow_from_the_transitions() -> None:
    assert {State.COMPLETED, State.DEAD, State.CANCELLED} == states.FINISHED
    assert {State.SCHEDULED, State.PENDING, State.RETRY} == states.RUNNABLE
    # A finished job moves on only by a person's retry or by retention and lifetimes; nothing runs it.
    for t in states.TRANSITIONS:
        if t.source in states.FINISHED:
            assert t.action in (Action.RETRY, Action.ARCHIVE, Action.PURGE, Action.EXPIRE), t
            assert t.action == Action.RETRY or t.target is None, t
    assert {State.SCHEDULED, State.BLOCKED, State.PENDING, State.RETRY} == states.EXPIRABLE
    # Only the lease holder and maintenance move a running job to another state.
    for t in states.TRANSITIONS:
        if t.source == State.RUNNING and t.target != State.RUNNING:
            assert t.actor in (states.Actor.LEASE_HOLDER, states.Actor.MAINTENANCE), t
