"""The generated reference pages are what the code prints now (frameiod/reference.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from frameiod import reference
from frameiod.config import models

PAGES = Path(__file__).resolve().parent.parent / "docs" / "reference"

TABLES = {
    name: model
    for name in models.__all__
    if isinstance(model := getattr(models, name), type)
    and issubclass(model, BaseModel)
    and name != "Config"
}
"""Every model of one ``config.toml`` table."""


@pytest.mark.parametrize("page", sorted(reference.PAGES))
def test_the_committed_page_is_what_the_generator_prints(page: str) -> None:
    """A changed model, description, command or option fails here until the page is
    regenerated with the command the message names."""
    committed = (PAGES / f"{page}.md").read_text(encoding="utf-8")
    generated = reference.PAGES[page]()
    assert committed == generated, (
        f"docs/reference/{page}.md differs from what the code says; regenerate it with:\n"
        f"    python -m frameiod.reference {page} > docs/reference/{page}.md\n"
        "(or: make docs-reference)"
    )


def test_the_cli_page_does_not_depend_on_the_terminal_width() -> None:
    """The command the page's note names prints the same page in a narrow terminal."""
    done = subprocess.run(
        [sys.executable, "-m", "frameiod.reference", "cli"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "COLUMNS": "20"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == reference.cli_reference()


def test_every_key_of_every_table_has_its_description_on_the_page() -> None:
    """A key added to a model without ``Field(description=...)`` fails here, and so does
    a table the page leaves out."""
    page = reference.config_reference()
    sections = dict(re.findall(r"^## `(\[[^\]]+\])`\n(.*?)(?=^## |\Z)", page, re.M | re.S))
    problems = []
    for model in TABLES.values():
        table = re.match(r"``(\[[^\]]+\])``", model.__doc__ or "")
        assert table, f"{model.__name__}'s docstring starts with its ``[table]``"
        section = sections.get(table[1])
        if section is None:
            problems.append(f"{table[1]}: no section")
            continue
        for key, field in model.model_fields.items():
            if reference._table_model(field.annotation) is not None:
                continue  # a table of its own, with its own section
            if not field.description:
                problems.append(f"{table[1]} {key}: no description in {model.__name__}")
            elif f"| `{key}` |" not in section:
                problems.append(f"{table[1]} {key}: not in its section")
    assert not problems
