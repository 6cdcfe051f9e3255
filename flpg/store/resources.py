"""Where the shipped `sql/` and `migrations/` directories are.

In a wheel they are package data under `flpg/_data/`; in a source checkout
(editable install) they are the top-level directories of the repository.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


def _find(name: str) -> Path:
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"flpg is installed without its {name}/ directory")


def sql_dir() -> Path:
    """The directory of named SQL files."""
    return _find("sql")


def migrations_dir() -> Path:
    """The Alembic script directory."""
    return _find("migrations")


def examples_dir() -> Path:
    """The examples shipped with flpg (the flagship `digits` app among them)."""
    return _find("examples")
