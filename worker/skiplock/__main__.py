"""The ``skiplock`` command (and ``python -m skiplock``): checks that the PostgreSQL driver loads,
then runs the CLI, so that a missing driver is one line naming the extra, never a traceback."""

from __future__ import annotations

import sys

from .extras import MissingDependency, require_driver


def main() -> int:
    try:
        require_driver()
    except MissingDependency as exc:
        print(f"skiplock: error: {exc}", file=sys.stderr)
        return 1
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
