"""What the database can store, checked before a user's value reaches it.

User input (options, `k=v` strings, an app's config defaults) is refused here with a
line naming where it came from, instead of failing a statement later. App output
is a different matter: it is made storable, not refused (`flpg.store.text`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flpg.errors import BadValue

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
"""The range of an `integer` column (priority, max_restarts)."""
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""The range of a `bigint` (ids) and of a TOML integer (config values)."""
NAME_LIMIT = 128
"""Characters of a node name (virtual suffix included) or a config key, at most."""


def text_problem(text: str) -> str | None:
    """Why PostgreSQL could not store `text` (NUL, or an unpaired surrogate left by
    bytes that are not UTF-8), or None if it can."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains bytes that are not UTF-8"
    return None


def check_text(text: str, what: str) -> str:
    """`text` if the database can store it; BadValue naming `what` otherwise."""
    problem = text_problem(text)
    if problem:
        raise BadValue(f"{what} {problem}: {_shown(text)}")
    return text


def check_name(name: str, what: str) -> str:
    """A node name: printable, no comma, no edge spaces, not only digits (it would be
    ambiguous with an id in `--nodes`), at most NAME_LIMIT characters."""
    check_text(name, what)
    if not name.strip():
        raise BadValue(f"{what} is empty")
    if len(name) > NAME_LIMIT:
        raise BadValue(f"{what} is {len(name)} characters long; at most {NAME_LIMIT} are allowed")
    if name != name.strip() or not name.isprintable() or "," in name:
        raise BadValue(
            f"{what} {_shown(name)} may not contain control characters or commas, "
            "nor start or end with a space"
        )
    if name.isdigit():
        raise BadValue(
            f"{what} {_shown(name)} is all digits, which `--nodes` would read as a node id; "
            "add a letter, e.g. node-" + name
        )
    return name


def check_config_value(value: Any, what: str) -> Any:
    """A config value as jsonb stores it faithfully: a bool, a 64-bit int, a finite
    float, storable text, or a list of those. Returns it; BadValue naming `what`."""
    if isinstance(value, str):
        return check_text(value, what)
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise BadValue(f"{what} = {value} is outside the 64-bit integer range")
        return value
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BadValue(
                f'{what} = {value} is not a finite number; quote it for text, e.g. "{value}"'
            )
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            check_config_value(item, f"{what}[{i}]")
        return value
    kind = type(value).__name__
    raise BadValue(
        f"{what} is a {kind}; config values are booleans, integers, floats, strings "
        "or lists of those (quote it for text)"
    )


def check_config(config: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Every key and value of a flat config, checked as above."""
    for key, value in config.items():
        check_text(key, f"{what}: key")
        check_config_value(value, f"{what}: {key}")
    return dict(config)


def _shown(text: str, limit: int = 60) -> str:
    """`text` quoted and escaped for an error line, shortened if long."""
    shown = ascii(text) if text_problem(text) else repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit]}...'"
