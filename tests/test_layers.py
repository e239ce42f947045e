"""The import graph is a one-way layering, and frameiod leans on no other library's
private parts outside the one module that is allowed to (DESIGN.md, "Modules").

Read from the source with `ast`, so the rules hold for code that no test happens to import.
Imports under ``if TYPE_CHECKING:`` are left out: they never run.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "frameiod"

# A module may import modules of a lower or equal rank; inside one subpackage, anything.
# Leaves and pure modules (rank 0) are importable by all; `idle` (the event loop's selector)
# only by what runs the loop.
RANKS = {
    "config": 0,
    "logs": 0,
    "metrics": 0,
    "systemd": 0,
    "ids": 0,
    "terminal": 0,
    "signature": 0,
    "events": 0,
    "responses": 0,
    "patterns": 0,
    "ratelimit": 0,
    "secret_ids": 0,
    "tasks": 0,
    "client": 1,
    "store": 1,
    "plugins": 2,
    "frameiod": 2,  # the package itself: the public API plugin authors import
    "dispatch": 3,
    "http": 3,
    "idle": 4,
    "daemon": 4,
    "service": 5,
    "testing": 5,
    "cli": 5,
    "__main__": 6,
    "reference": 6,  # prints the generated docs pages from the config models and the CLI
}
NEVER = {("http", "dispatch"), ("dispatch", "http")}
"""Layers that meet only at the store."""

PRIVATE_HOOKS = {"http/aiohttp_hooks.py"}
"""The one place allowed to touch other libraries' private names (pinned, tested on the
newest release by `make test-newest`)."""


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "frameiod"


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(path: Path, known: set[str]) -> set[str]:
    """The frameiod modules that ``path`` imports when it runs."""
    found: set[str] = set()
    package = _name(path) if path.name == "__init__.py" else _name(path).rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "frameiod")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] != "frameiod":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    return found


@functools.cache
def _graph() -> dict[str, set[str]]:
    known = {_name(p) for p in _modules()}
    return {_name(p): _imports(p, known) - {_name(p)} for p in _modules()}


@pytest.mark.parametrize("module", sorted(_graph()))
def test_imports_only_go_down_the_layers(module: str) -> None:
    """A module imports only modules of its own subpackage or of a lower layer."""
    mine = _layer(module)
    assert mine in RANKS, f"{module}: add its layer to RANKS (and to DESIGN.md)"
    wrong = []
    for imported in sorted(_graph()[module]):
        theirs = _layer(imported)
        if theirs == mine and mine != "frameiod":
            continue
        if theirs == "frameiod" and imported == "frameiod" and mine == "frameiod":
            continue
        if (mine, theirs) in NEVER or RANKS[theirs] > RANKS[mine]:
            wrong.append(imported)
    assert not wrong, f"{module} ({mine}) must not import {wrong}"


def test_store_knows_nothing_of_the_event_loop_or_its_callers() -> None:
    """The store is handed its hand-over trigger; it imports none of http, dispatch,
    plugins, the daemon, the CLI or the loop's selector."""
    graph = _graph()
    reached = {
        (module, imported)
        for module, imports in graph.items()
        if _layer(module) == "store"
        for imported in imports
        if _layer(imported) in {"http", "dispatch", "plugins", "daemon", "cli", "idle", "testing"}
    }
    assert not reached


def test_no_import_cycle() -> None:
    """The runtime import graph has no cycle (a package's ``__init__`` counts as a module)."""
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == 1:
                cycles.append([*trail[trail.index(imported) :], imported])
            elif imported not in state:
                visit(imported, [*trail, imported])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # A package importing its own submodule, which imports the package back for a name,
    # is how every package's public API works: only cycles between different modules
    # that do not pass through a package's __init__ count.
    real = [c for c in cycles if not any(m == "frameiod" for m in c)]
    assert not real


def _own_private_names() -> set[str]:
    """Every ``_name`` frameiod defines itself: functions, classes, attributes it assigns."""
    names: set[str] = set()
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names.add(node.value)  # __slots__ entries
            elif isinstance(node, ast.alias):
                names.add(node.asname or node.name.split(".")[-1])
    return {n for n in names if n.startswith("_")}


STDLIB_PRIVATE = {"_replace", "_asdict", "_fields", "_exit", "_getframe"}
"""Private-looking names the standard library documents as public."""

ALLOWED = {"_client_wrapper"}
"""The frameio SDK takes ``max_retries`` only per call; its client wrapper's default is the
one way to set it for every call a plugin makes (`frameiod.client`, the SDK pinned < 5)."""

ARGPARSE_WALK = {"_get_subactions"}
"""argparse has no public way to walk its subcommands and their help: `frameiod.reference`
reads ``parser._actions`` and this to print the CLI reference, which
tests/test_docs_reference.py compares with the committed page on every Python the suite
runs on."""


def test_no_private_attribute_of_another_library() -> None:
    """Outside `PRIVATE_HOOKS`, no ``obj._name`` that frameiod did not define itself, and
    no ``_name`` imported from another package."""
    own = _own_private_names() | STDLIB_PRIVATE | ALLOWED | ARGPARSE_WALK
    found = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in PRIVATE_HOOKS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                if not node.attr.startswith("__") and node.attr not in own:
                    found.append(f"{relative}:{node.lineno}: .{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] not in {
                "frameiod",
                "",
            }:
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{relative}:{node.lineno}: import {alias.name}")
    assert not found


THIRD_PARTY_WITH_PRIVATE_HOOKS = {"aiohttp", "structlog", "pluggy", "prometheus_client"}


def _library_names(tree: ast.AST) -> set[str]:
    """Names bound to anything imported from those libraries in one module."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in THIRD_PARTY_WITH_PRIVATE_HOOKS:
                    names.add((alias.asname or alias.name).split(".")[0])
        elif (
            isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in THIRD_PARTY_WITH_PRIVATE_HOOKS
        ):
            names.update(alias.asname or alias.name for alias in node.names)
    return names


def test_no_private_method_of_another_library_is_overridden() -> None:
    """Outside `PRIVATE_HOOKS`, a subclass of a library's class defines no ``_method``
    (overriding a private method is relying on it), and no object's class is swapped."""
    found = []
    for path in _modules():
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in PRIVATE_HOOKS:
            continue
        tree = ast.parse(path.read_text())
        library = _library_names(tree)
        for node in ast.walk(tree):
            swapped = isinstance(node, ast.Attribute) and node.attr == "__class__"
            if swapped and isinstance(node.ctx, ast.Store):
                found.append(f"{relative}:{node.lineno}: assigns __class__")
            if not isinstance(node, ast.ClassDef):
                continue
            roots = {ast.unparse(base).split(".")[0] for base in node.bases}
            if not roots & library:
                continue
            for item in node.body:
                name = getattr(item, "name", "")
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{relative}:{item.lineno}: {node.name}.{item.name}")
    assert not found
