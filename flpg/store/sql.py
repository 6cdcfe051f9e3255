"""Named SQL queries, loaded once from the `sql/` directory.

Each `.sql` file holds blocks that start with `-- name: <query_name>`; the text up
to the next header is the query. Names are unique across files and noun-first,
`<table>_<verb>[_<detail>]`, in the file of that table's group.

Views are DDL, one file per view and version: `sql/views/<view>.v<N>.sql`. A
released version never changes; migrations name the version they create.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from flpg.store.resources import sql_dir

_HEADER = re.compile(r"^--\s*name:\s*(?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse(text: str) -> dict[str, str]:
    """Split one file's text into `{name: query}`; raises ValueError on duplicates."""
    found: dict[str, str] = {}
    headers = list(_HEADER.finditer(text))
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        body = text[header.end() : end].strip()
        name = header.group("name")
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        found[name] = body.rstrip(";").strip()
    return found


@cache
def queries() -> dict[str, str]:
    """All named queries of `sql/*.sql`."""
    merged: dict[str, str] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        for name, body in parse(path.read_text()).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            merged[name] = body
    return merged


def query(name: str) -> str:
    """The text of one named query; KeyError if there is none."""
    return queries()[name]


_VIEW_FILE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.sql$")


def _view_files() -> dict[str, dict[int, Path]]:
    """`{view: {version: file}}` of `sql/views/`; ValueError on a misnamed file."""
    found: dict[str, dict[int, Path]] = {}
    for path in sorted((sql_dir() / "views").glob("*.sql")):
        match = _VIEW_FILE.match(path.name)
        if match is None:
            raise ValueError(f"view file {path.name!r} is not named <view>.v<N>.sql")
        found.setdefault(match["name"], {})[int(match["version"])] = path
    return found


def view(name: str, version: int) -> str:
    """The DDL (`CREATE OR REPLACE VIEW`) of one version of a view, as a migration
    names it; FileNotFoundError if that version was never shipped."""
    path = sql_dir() / "views" / f"{name}.v{version}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no view file {path.name} in {path.parent}")
    return path.read_text()


def latest_views() -> dict[str, str]:
    """`{view: DDL}` of each view's newest version (what migrations to head create),
    ordered so that a view comes after the views it selects from."""
    newest = {name: view(name, max(v)) for name, v in _view_files().items()}
    ordered: dict[str, str] = {}
    while len(ordered) < len(newest):
        ready = [
            name
            for name, ddl in newest.items()
            if name not in ordered
            and all(
                other in ordered or other == name or not re.search(rf"\b{other}\b", ddl)
                for other in newest
            )
        ]
        if not ready:
            raise ValueError(f"views depend on each other in a cycle: {sorted(newest)}")
        ordered.update((name, newest[name]) for name in ready)
    return ordered
