"""Write the generated part of docs/state-machine.md (the diagram and the transitions table) from
skiplock/states.py; with --check, exit 1 if it is not current. Run: .venv/bin/python tools/state_diagram.py"""

from __future__ import annotations

import sys
from pathlib import Path

from skiplock.states import with_generated_docs

DOC = Path(__file__).resolve().parent.parent / "docs" / "state-machine.md"


def main(argv: list[str]) -> int:
    current = DOC.read_text()
    wanted = with_generated_docs(current)
    if "--check" in argv:
        if current != wanted:
            print(f"{DOC} is not current: run python tools/state_diagram.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
