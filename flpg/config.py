"""User-supplied configuration: `k=v` strings and an app's config defaults.

Values use TOML syntax (`lr=0.1`, `name="x"`, `flag=true`); a bare word without
quotes is taken as a string. Keys may contain letters, digits, `-`, `_` and `.`.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from collections.abc import Mapping
from typing import Any

from flpg.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")

ConfigValue = bool | int | float | str | list[Any]


def parse_value(raw: str, key: str, what: str) -> ConfigValue:
    """One value in TOML syntax, or a bare word as a string."""
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if _BARE.match(raw):
            return raw
        raise ConfigError(
            f"{what}: value of {key!r} ({raw!r}) is not a TOML value; quote strings, "
            f'e.g. {key}="{raw}"'
        ) from None
    if isinstance(value, dict):
        raise ConfigError(f"{what}: value of {key!r} must be a scalar or a list, not a table")
    return value  # type: ignore[no-any-return]


def parse_kv(text: str | None, what: str = "config") -> dict[str, ConfigValue]:
    """Parse `"k=v k2=v2"`; raises ConfigError naming the first bad item."""
    if not text or not text.strip():
        return {}
    try:
        items = shlex.split(text, posix=True)
    except ValueError as exc:
        raise ConfigError(f"{what}: cannot split {text!r}: {exc}") from None
    out: dict[str, ConfigValue] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{what}: {item!r} is not of the form key=value")
        if not _KEY.match(key):
            raise ConfigError(f"{what}: {key!r} is not a valid key (letters, digits, - _ .)")
        if raw == "":
            raise ConfigError(f"{what}: {key!r} has no value; write {key}=VALUE")
        out[key] = parse_value(raw, key, what)
    return out


def merge_run_config(
    defaults: Mapping[str, Any], overrides: Mapping[str, Any], app_name: str
) -> dict[str, Any]:
    """The app's defaults with `overrides` applied; unknown keys are an error."""
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ConfigError(
            f"run config key {unknown[0]!r} is not in [tool.flpg.app.config] of {app_name} "
            f"(known keys: {known})"
        )
    return {**defaults, **overrides}
