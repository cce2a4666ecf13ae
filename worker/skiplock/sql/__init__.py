"""Every SQL statement of skiplock, loaded by name from ``queries.sql``, and the migrations.

State lists are never written out in ``queries.sql``: ``{{runnable}}`` and the other names of
``skiplock.states.SQL_SETS`` stand for them and become ``('pending', 'scheduled', 'retry')`` here,
from the one transitions table. A part that two statements share is written once, as a
``-- fragment: name`` that they include with ``{{> name}}``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from ..states import SQL_SETS, sql_list

_NAME = re.compile(r"^-- (name|fragment): (\w+)\s*$", re.MULTILINE)
_SET = re.compile(r"\{\{(\w+)\}\}")
_FRAGMENT = re.compile(r"\{\{> (\w+)\}\}")


def _expand(match: re.Match[str]) -> str:
    name = match.group(1)
    if name not in SQL_SETS:
        raise KeyError(f"queries.sql names an unknown state set {{{{{name}}}}} (see skiplock.states.SQL_SETS)")
    return sql_list(SQL_SETS[name])


def _parse(text: str) -> dict[str, str]:
    """Statements by name; ``{{> f}}`` in one stands for the text of ``-- fragment: f`` (a part two
    statements share, written once), and comment lines are dropped."""
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    fragments: dict[str, str] = {}

    def include(match: re.Match[str]) -> str:
        if match.group(1) not in fragments:
            raise KeyError(f"queries.sql includes an unknown fragment {{{{> {match.group(1)}}}}} (define it first)")
        return fragments[match.group(1)]

    for kind, name, body in zip(parts[1::3], parts[2::3], parts[3::3], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        text = _SET.sub(_expand, _FRAGMENT.sub(include, "\n".join(lines).strip().rstrip(";")))
        (fragments if kind == "fragment" else queries)[name] = text
    return queries


QUERIES: dict[str, str] = _parse(resources.files(__name__).joinpath("queries.sql").read_text())

API_STATEMENTS: dict[str, tuple[str, ...]] = {
    "enqueue": ("jobs",),
    "find_dedup": ("queues", "keys"),
    "claim": ("queue", "types", "limit", "worker_id", "lease_seconds"),
    "lock_limits": ("types",),
    "claim_limited": ("queue", "types", "limit", "worker_id", "lease_seconds", "burst_seconds"),
    "finish": ("batch", "ids", "worker_id", "retry_policy"),
    "propagate": ("ids",),
    "release": ("ids", "attempts", "worker_id"),
    "heartbeat": ("worker_id", "queues", "types", "hostname", "pid", "concurrency", "ids", "lease_seconds"),
}
"""The statements the SQL API functions (migration 0005) run, and the order of their parameters:
``skiplock migrate`` stores them in ``skiplock.statements`` with ``%(name)s`` numbered ``$n``, and
the functions ``EXECUTE`` them. The worker runs the same text: one implementation per state change."""

_PLACEHOLDER = re.compile(r"%\((\w+)\)s")


def numbered(name: str) -> str:
    """Statement ``name`` with its named parameters as ``$1, $2...`` in ``API_STATEMENTS`` order."""
    order = API_STATEMENTS[name]
    text = QUERIES[name]
    used = set(_PLACEHOLDER.findall(text))
    if used != set(order):
        raise KeyError(f"statement {name}: parameters {sorted(used)} are not those of API_STATEMENTS {sorted(order)}")
    return _PLACEHOLDER.sub(lambda m: f"${order.index(m.group(1)) + 1}", text).replace("%%", "%")


@dataclass(frozen=True)
class Migration:
    """One numbered schema change, e.g. ``0001_initial.sql``."""

    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """All migrations shipped with this version, in order."""
    found = []
    for entry in resources.files(__name__).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            found.append(Migration(int(version), name, entry.read_text()))
    return sorted(found, key=lambda m: m.version)
