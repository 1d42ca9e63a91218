"""docs/reliability.md and the tests that produce it cannot drift apart.

Every row of its tables names a test (``path::function`` or ``path::Class::method``) that exists
and carries ``@pytest.mark.reliability("<the row's id>")``; every test so marked has a row.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
_ROW = re.compile(r"^\|\s*`?(?P<id>[a-z0-9-]+)`?\s*\|(?P<what>[^|]+)\|\s*`(?P<test>[^`]+)`\s*\|")


def documented() -> dict[str, str]:
    """Row id -> test node id, from the document's tables."""
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        match = _ROW.match(line)
        if match:
            assert match["id"] not in rows, f"id {match['id']} appears twice in {DOC.name}"
            rows[match["id"]] = match["test"]
    return rows


def _case_of(decorators: list[ast.expr]) -> str | None:
    for dec in decorators:
        if (
            isinstance(dec, ast.Call)
            and isinstance(dec.func, ast.Attribute)
            and dec.func.attr == "reliability"
            and dec.args
            and isinstance(dec.args[0], ast.Constant)
        ):
            return str(dec.args[0].value)
    return None


def marked() -> dict[str, str]:
    """Case id -> test node id, from the ``reliability`` marks in tests/."""
    cases: dict[str, str] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text())
        rel = path.relative_to(ROOT).as_posix()
        for node in tree.body:
            found: list[tuple[str, list[ast.expr]]] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                found.append((node.name, node.decorator_list))
            elif isinstance(node, ast.ClassDef):
                found += [
                    (f"{node.name}::{item.name}", item.decorator_list)
                    for item in node.body
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
            for name, decorators in found:
                case = _case_of(decorators)
                if case is not None:
                    assert case not in cases, f"case {case} marks two tests"
                    cases[case] = f"{rel}::{name}"
    return cases


def test_every_row_names_a_test_marked_with_its_id() -> None:
    rows, marks = documented(), marked()
    assert rows, f"{DOC} has no rows"
    wrong = {case: test for case, test in rows.items() if marks.get(case) != test}
    assert not wrong, f"rows whose test does not exist or is not marked with the row's id: {wrong}"


def test_every_marked_test_has_a_row() -> None:
    rows, marks = documented(), marked()
    missing = sorted(set(marks) - set(rows))
    assert not missing, f"marked tests without a row in {DOC.name}: {missing}"
