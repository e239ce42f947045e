"""docs/development.md's Layout table names every module of the package, so a newcomer
finding a file finds its job (a new module without a row fails here)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "frameiod"


def layout_rows() -> list[tuple[str, str]]:
    """The Layout table's rows: (where, the whole row)."""
    page = (ROOT / "docs" / "development.md").read_text()
    section = page.split("## Layout", 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [(row.split(" | ", 1)[0], row) for row in rows]


def unnamed_modules(package: Path = PACKAGE) -> list[str]:
    """The package's modules the Layout table does not name: a module is named by its path
    (`store/base.py`), or by its file name in the row of its folder (`store/sqlite/`)."""
    rows = layout_rows()
    missing = []
    for path in sorted(package.rglob("*.py")):
        module = path.relative_to(package)
        if module.name == "__init__.py" or "plugin_template" in module.parts:
            continue
        name = f"`{module.name}`"
        if any(f"`{module.as_posix()}`" in where for where, _ in rows):
            named = True
        elif len(module.parts) == 1:
            named = any(name in where for where, _ in rows)
        else:
            folder = f"`{module.parent.as_posix()}/`"
            named = any(folder in where and name in row for where, row in rows)
        if not named:
            missing.append(module.as_posix())
    return missing


def test_every_module_has_its_row():
    assert unnamed_modules() == [], "add these modules to docs/development.md's Layout table"


def test_a_module_without_a_row_is_found(tmp_path: Path):
    """The check itself: a module the table does not name is reported."""
    package = tmp_path / "frameiod"
    (package / "http").mkdir(parents=True)
    (package / "http" / "nowhere.py").write_text("")
    (package / "lonely.py").write_text("")
    (package / "idle.py").write_text("")
    (package / "store").mkdir()
    (package / "store" / "base.py").write_text("")
    assert unnamed_modules(package) == ["http/nowhere.py", "lonely.py"]
