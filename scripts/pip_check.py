"""`pip check` for an image built from a lock with overrides (scripts/locks.sh): every broken
requirement fails the build, except a requirement the overrides file removed on purpose (a
requirement with a marker that never holds: ``name ; sys_platform == "never"``), which is
reported as accepted. Standard library only (it runs in the image's Python at build time).

usage: python scripts/pip_check.py [OVERRIDES]   (exit 1 on any other broken requirement)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_MISSING = re.compile(r"^(?P<owner>\S+) \S+ requires (?P<name>[^,]+), which is not installed\.$")
_DROPPED = re.compile(
    r"""^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*;\s*sys_platform\s*==\s*["']never["']"""
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dropped(overrides: Path | None) -> set[str]:
    """The names an overrides file removes."""
    if overrides is None:
        return set()
    found = set()
    for line in overrides.read_text().splitlines():
        match = _DROPPED.match(line.split("#", 1)[0].strip())
        if match:
            found.add(canonical(match["name"]))
    return found


def broken(report: str, accepted: set[str]) -> tuple[list[str], list[str]]:
    """(lines of pip check's report that fail, lines accepted as dropped on purpose)."""
    failing, ok = [], []
    for line in report.splitlines():
        line = line.strip()
        if not line or line == "No broken requirements found.":
            continue
        match = _MISSING.match(line)
        (ok if match and canonical(match["name"]) in accepted else failing).append(line)
    return failing, ok


def main(argv: list[str]) -> int:
    accepted = dropped(Path(argv[0]) if argv else None)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "check"], capture_output=True, text=True, check=False
    )
    failing, ok = broken(done.stdout + done.stderr, accepted)
    for line in ok:
        print(f"pip check: accepted (removed by {argv[0]}): {line}")
    for line in failing:
        print(f"pip check: {line}", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
