"""docs/faults.md cannot drift: every row names at least one test, and every test it names
exists (a renamed or deleted test fails here, not silently in the docs)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAULTS = ROOT / "docs" / "faults.md"
TEST_ID = re.compile(r"tests/[\w/]+\.py(?:::\w+)+")


def _rows() -> list[str]:
    """The table rows of docs/faults.md (header and separator lines left out)."""
    lines = FAULTS.read_text().splitlines()
    return [
        line
        for line in lines
        if line.startswith("| ") and not line.startswith(("| fault ", "| --- "))
    ]


def _defined(path: Path, names: list[str]) -> bool:
    """Whether ``names`` (a class, then a function inside it, or a function) is defined at
    the top of ``path``."""
    scope: list[ast.stmt] = ast.parse(path.read_text()).body
    for name in names:
        found = [
            node
            for node in scope
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name == name
        ]
        if not found:
            return False
        scope = found[0].body if isinstance(found[0], ast.ClassDef) else []
    return True


def test_every_row_names_a_test() -> None:
    rows = _rows()
    assert len(rows) >= 30
    assert [row for row in rows if not TEST_ID.search(row)] == []


@pytest.mark.parametrize("test_id", sorted({t for row in _rows() for t in TEST_ID.findall(row)}))
def test_every_test_it_names_exists(test_id: str) -> None:
    path, *names = test_id.split("::")
    assert (ROOT / path).is_file(), f"{path} does not exist"
    assert _defined(ROOT / path, names), f"{test_id} is not defined"


def test_a_test_that_does_not_exist_is_caught() -> None:
    assert not _defined(ROOT / "tests" / "test_faults_doc.py", ["test_no_such_test"])
    assert not _defined(ROOT / "tests" / "test_logs.py", ["TestLastingFault", "test_nope"])
    assert _defined(ROOT / "tests" / "test_logs.py", ["TestLastingFault"])
