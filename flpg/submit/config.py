"""User-supplied configuration: `k=v` strings, TOML files, and an app's config defaults.

The syntax is Flower's `--run-config` / `-c` (`flwr.common.config.parse_config_args`):
items are separated by spaces, each `key=value` with a TOML value whose quotes are
kept (`lr=0.1`, `name="a b"`, `flag=true`, `sizes=[64, 32]`, `cols='age,bmi'`,
`path='C:\\x'`; `'5'` is the string "5"). Unlike Flower, a bare word without quotes
is taken as a string (`mode=fast`). Keys may contain letters, digits, `-`, `_` and
`.`. A key given twice in one string is refused, as Flower's TOML parse refuses it.
A value that is a path ending in `.toml` is read as a TOML file instead, its tables
flattened to dotted keys (`[model] lr = 0.1` is `model.lr`), as Flower does. The
option is repeatable and a later value wins a key over an earlier one, as in Flower
(which, unlike flpg, refuses a file beside `k=v` strings).

Every value must be storable as jsonb (see `flpg.submit.limits`): a bool, a 64-bit int, a
finite float, text without NUL, or a list of those.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flpg.app.compressed import REPLY_CODEC_KEY, reply_codec
from flpg.errors import ConfigError
from flpg.submit.limits import NAME_LIMIT, check_config, check_config_value

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")
_OPEN, _CLOSE = "[{", "]}"

ConfigValue = bool | int | float | str | list[Any]


def _string_end(text: str, start: int, what: str) -> int:
    """The index after the TOML string that opens at `start` (basic strings honour
    backslash escapes, literal ones do not)."""
    quote, i = text[start], start + 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            return i + 1
        i += 1
    raise ConfigError(f"{what}: unterminated {quote} quote in {text[start:]!r}")


def split_items(text: str, what: str) -> list[str]:
    """Split at whitespace outside quotes and brackets: `a="x y" b=[1, 2]` -> 2 items."""
    items: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        start, depth = i, 0
        while i < n and not (depth == 0 and text[i].isspace()):
            if text[i] in "\"'":
                i = _string_end(text, i, what)
                continue
            depth += (text[i] in _OPEN) - (text[i] in _CLOSE and depth > 0)
            i += 1
        if i > start:
            items.append(text[start:i])
    return items


def _outside_strings(raw: str) -> str:
    """`raw` with its quoted parts removed (so a `#` there is not a TOML comment)."""
    out, i = [], 0
    while i < len(raw):
        if raw[i] in "\"'":
            i = _string_end(raw, i, "value")
            continue
        out.append(raw[i])
        i += 1
    return "".join(out)


def parse_value(raw: str, key: str, what: str) -> ConfigValue:
    """One value in TOML syntax (quotes kept), or a bare word as a string."""
    value: Any = None
    if "#" not in _outside_strings(raw):  # `v = 1#x` would parse as 1
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = None
    if value is None:
        if _BARE.match(raw):
            return raw
        raise ConfigError(
            f"{what}: value of {key!r} ({raw!r}) is not a TOML value; quote strings, "
            f"e.g. {key}={json.dumps(raw, ensure_ascii=True)}"
        )
    if isinstance(value, dict):
        raise ConfigError(f"{what}: value of {key!r} must be a scalar or a list, not a table")
    return check_config_value(value, f"{what}: {key}")  # type: ignore[no-any-return]


def parse_kv(text: str | None, what: str = "config") -> dict[str, ConfigValue]:
    """Parse `"k=v k2=v2"`; raises ConfigError (or BadValue) naming the first bad item."""
    out: dict[str, ConfigValue] = {}
    for item in split_items(text or "", what):
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what}: {item!r} is not of the form key=value")
        if not _KEY.match(key) or len(key) > NAME_LIMIT:
            raise ConfigError(
                f"{what}: {key!r} is not a valid key (letters, digits, - _ ., "
                f"at most {NAME_LIMIT} characters)"
            )
        if raw == "":
            raise ConfigError(f"{what}: {key!r} has no value; write {key}=VALUE")
        if key in out:
            raise ConfigError(f"{what}: key {key!r} is given twice; give each key once")
        out[key] = parse_value(raw, key, what)
    return out


def parse_kv_all(texts: Iterable[str], what: str) -> dict[str, ConfigValue]:
    """Several `k=v` strings (a repeatable option) as one mapping; a key in two of
    them is refused like a key given twice in one."""
    out: dict[str, ConfigValue] = {}
    for text in texts:
        for key, value in parse_kv(text, what).items():
            if key in out:
                raise ConfigError(f"{what}: key {key!r} is given twice; give each key once")
            out[key] = value
    return out


TOML_SUFFIX = ".toml"


def is_config_file(text: str) -> bool:
    """Whether a config option's value names a TOML file rather than `k=v` items: it
    ends in `.toml` and holds no `=` (or is an existing file, `dir=a/x.toml`)."""
    path = text.strip()
    return path.endswith(TOML_SUFFIX) and ("=" not in path or Path(path).is_file())


def read_config_file(path: str, what: str) -> dict[str, ConfigValue]:
    """The TOML file at `path` as flat config: its tables flattened to dotted keys,
    each value one jsonb can store. ConfigError (or BadValue) as one line naming the
    file: unreadable, not UTF-8, not TOML (with the parser's reason and position)."""
    where = f"{what} file {path}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text (byte offset {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None
    return check_config(flatten(doc, where=where), where)


def parse_config_arg(text: str, what: str) -> dict[str, ConfigValue]:
    """One value of a config option: a TOML file (see `is_config_file`) or `k=v` items."""
    if is_config_file(text):
        return read_config_file(text.strip(), what)
    return parse_kv(text, what)


@dataclass(frozen=True)
class Overrides:
    """Config overrides from a repeatable option, each key with the argument or file
    that set it last (named in errors about its value)."""

    values: dict[str, ConfigValue] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def parse_overrides(texts: str | Sequence[str] | None, what: str = "--run-config") -> Overrides:
    """The values of a repeatable config option (`-c A -c B`), each `k=v` items or a
    TOML file; a key set by a later value wins, as in Flower. A `k=v` value is named
    `what` in errors when it is the only one, else `what argument N`; a file is named
    `what file PATH`."""
    given = [texts] if isinstance(texts, str) else list(texts or ())
    out = Overrides()
    for number, text in enumerate(given, 1):
        if is_config_file(text):
            source = f"{what} file {text.strip()}"
            parsed = read_config_file(text.strip(), what)
        else:
            source = what if len(given) == 1 else f"{what} argument {number}"
            parsed = parse_kv(text, source)
        for key, value in parsed.items():
            out.values[key] = value
            out.sources[key] = source
    return out


def flatten(config: Mapping[str, Any], prefix: str = "", where: str = "config") -> dict[str, Any]:
    """Nested tables as dotted keys, as Flower flattens an app's config:
    `[tool.flpg.app.config.model] lr = 0.1` (or `[tool.flwr.app.config.model]`) is the
    key `model.lr`. A key spelled both ways (`"model.lr" = 1` beside that table) is a
    ConfigError naming `where`, where Flower would keep one of the two silently."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        found = flatten(value, f"{name}.", where) if isinstance(value, Mapping) else {name: value}
        for dotted, leaf in found.items():
            if dotted in flat:
                raise ConfigError(
                    f"{where}: key {dotted!r} is given twice (as a dotted key and in a "
                    "nested table); give it once"
                )
            flat[dotted] = leaf
    return flat


_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean (true or false)"),
    (int, "an integer"),
    (float, "a number"),
    (str, 'a string (quote it: key="...")'),
    (list, "a list"),
)


def _kind(value: Any) -> str:
    return next(name for t, name in _KINDS if isinstance(value, t))


def _typed(key: str, default: Any, value: Any, where: str, source: str) -> Any:
    """`value` as the type of `default`: an int is accepted for a float default (and
    becomes that float); any other mismatch is a ConfigError naming the `source` of the
    value, key, type and value."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = next(t for t, _ in _KINDS if isinstance(default, t))
    if isinstance(value, expected) and (expected is not int or not isinstance(value, bool)):
        return value
    shown = json.dumps(value, ensure_ascii=True)  # TOML spells these alike: "x", 1.5, true
    raise ConfigError(
        f"{source}: {key} must be {_kind(default)} like its default "
        f"{json.dumps(default)} in {where}, got {shown}"
    )


FLPG_KEYS = frozenset({REPLY_CODEC_KEY})
"""Run config keys flpg itself reads, accepted whether or not the app declares them."""


def _check_flpg_keys(config: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """ConfigError (one line, naming the key and its source) for a bad flpg key value."""
    try:
        reply_codec(config)
    except ValueError as exc:
        raise ConfigError(f"{sources.get(REPLY_CODEC_KEY, '--run-config')}: {exc}") from None


def merge_run_config(
    defaults: Mapping[str, Any],
    overrides: Mapping[str, Any] | Overrides,
    app_name: str,
    table: str = "[tool.flpg.app.config]",
) -> dict[str, Any]:
    """The app's defaults (flattened) with `overrides` applied, each override of the
    type of its default. As Flower's `fuse_dicts` (check_keys=True), a key that is not
    in the defaults is refused, except flpg's own (FLPG_KEYS), which are checked.
    Defaults that jsonb cannot store are refused too. `table` is the pyproject table
    the defaults came from (for messages); errors about an override name its source
    (`Overrides.sources`, else `--run-config`)."""
    values, sources = (
        (overrides.values, overrides.sources)
        if isinstance(overrides, Overrides)
        else (overrides, {})
    )
    where = f"{table} of {app_name}"
    flat = check_config(flatten(defaults, where=where), where)
    _check_flpg_keys({**flat, **values}, sources)
    unknown = sorted(set(values) - set(flat) - FLPG_KEYS)
    if unknown:
        known = ", ".join(sorted(flat)) or "none"
        source = sources.get(unknown[0], "--run-config")
        raise ConfigError(f"{source}: key {unknown[0]!r} is not in {where} (known keys: {known})")
    typed = {
        key: _typed(key, flat[key], value, where, sources.get(key, "--run-config"))
        if key in flat
        else value
        for key, value in values.items()
    }
    return {**flat, **typed}
