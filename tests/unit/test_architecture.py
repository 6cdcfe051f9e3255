"""Who may import whom inside `flpg` (docs/architecture.md, "Import rules").

Each part of the package is listed with the parts it may import. A new import
that crosses a boundary fails here with the edge that broke the rule, so the
layering stays what the architecture page says it is.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import flpg

PACKAGE = Path(flpg.__file__).resolve().parent

FOUNDATION = {"errors", "states", "settings"}
VALUES = FOUNDATION | {"app"}
SCHEMA = VALUES | {"store", "models"}
APPS = SCHEMA | {"bus", "serverapp", "clientapp", "bundle"}
WORKER = APPS | {"lifecycle"}

ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "states": set(),
    "lifecycle": set(),
    "settings": {"errors"},
    "app": FOUNDATION,
    "models": {"states"},
    "store": SCHEMA,
    "bus": SCHEMA,
    "clientapp": VALUES,
    # Flower's flwr.common as apps use it, and the `import flwr` aliases of app processes.
    "common": {"app"},
    "compat": {"app", "serverapp", "clientapp", "common"},
    "serverapp": SCHEMA | {"bus"},
    "strategy": {"serverapp"},
    "bundle": SCHEMA | {"serverapp", "clientapp", "compat"},
    "submit": SCHEMA | {"bundle"},
    # The three workers never import each other: they meet only in the database.
    "link": WORKER,
    "exec": WORKER | {"compat"},
    "node": WORKER | {"compat"},
    # The user-facing top: the CLI and the one-machine conveniences use everything.
    "cli": WORKER | {"submit", "local", "link", "exec", "node", "ui"},
    "ui": SCHEMA,
    "local": WORKER | {"submit", "cli"},
    "__init__": VALUES | {"serverapp", "clientapp"},
}


def part_of(path: Path) -> str:
    """The part a module belongs to: its sub-package, or its own name at the top."""
    rel = path.relative_to(PACKAGE).parts
    return rel[0].removesuffix(".py")


def imported_parts(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """(line, part) for every `flpg` part a module imports, lazy imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "flpg":
                for alias in node.names:
                    yield node.lineno, alias.name
            elif node.module.startswith("flpg."):
                yield node.lineno, node.module.split(".")[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("flpg."):
                    yield node.lineno, alias.name.split(".")[1]


def edges() -> Iterator[tuple[str, str, str]]:
    """(importing part, imported part, where) for every cross-part import in flpg."""
    for path in sorted(PACKAGE.rglob("*.py")):
        source = part_of(path)
        for line, target in imported_parts(ast.parse(path.read_text(), str(path))):
            if target != source:
                yield source, target, f"{path.relative_to(PACKAGE)}:{line}"


def test_every_part_of_the_package_has_a_rule() -> None:
    parts = {part_of(p) for p in PACKAGE.rglob("*.py")}
    assert parts - set(ALLOWED) == set(), "add the new part to ALLOWED and docs/architecture.md"


def test_imports_follow_the_layering() -> None:
    broken = [
        f"{where}: {source} imports {target}"
        for source, target, where in edges()
        if target not in ALLOWED[source]
    ]
    assert broken == []


def test_the_scan_sees_cross_part_imports() -> None:
    seen = {(source, target) for source, target, _ in edges()}
    assert {("node", "store"), ("cli", "local"), ("serverapp", "bus")} <= seen


def test_the_rules_reject_a_worker_importing_another() -> None:
    for worker in ("link", "exec", "node"):
        assert ALLOWED[worker] & {"link", "exec", "node", "cli", "local", "submit"} == set()
