"""Every SQL statement of skiplock, loaded by name from ``queries.sql``, and the migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def _parse(text: str) -> dict[str, str]:
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip().rstrip(";")
    return queries


QUERIES: dict[str, str] = _parse(resources.files(__name__).joinpath("queries.sql").read_text())


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
