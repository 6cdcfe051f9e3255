"""Named SQL queries, loaded once from the `sql/` directory.

Each `.sql` file holds blocks that start with `-- name: <query_name>`; the text up
to the next header is the query. Names are unique across files.
"""

from __future__ import annotations

import re
from functools import cache

from flpg.resources import sql_dir

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
    """All named queries of `sql/*.sql` (views.sql excluded: it is DDL)."""
    merged: dict[str, str] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        if path.name == "views.sql":
            continue
        for name, body in parse(path.read_text()).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined twice ({path.name})")
            merged[name] = body
    return merged


def query(name: str) -> str:
    """The text of one named query; KeyError if there is none."""
    return queries()[name]
