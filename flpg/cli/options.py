"""Click parameter types for every `flpg` option: the one place user input is checked.

Each type refuses, before any database work, a value the database would reject
(out of a column's range, unstorable text, an over-long or ambiguous name) or that
makes no sense (an absurd worker count), raising an FlpgError whose message names
the option; `flpg.cli` prints it as one line (exit 2). Text options come back
unchanged, so the library functions they are passed to parse them as before.
"""

from __future__ import annotations

import math
from typing import Any

import click

from flpg.errors import BadValue, ConfigError
from flpg.store.db import redact, url_problem
from flpg.submit.config import parse_config_arg, parse_kv
from flpg.submit.limits import INT32_MAX, INT32_MIN, INT64_MAX, check_name, check_text
from flpg.submit.selection import parse_node_list


def _name(param: click.Parameter | None) -> str:
    """How the user wrote the option (`--priority`) or argument (`RUN_ID`)."""
    if param is None:
        return "value"
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return (param.name or "value").upper()


class Bounded(click.ParamType[int]):
    """An integer within `[low, high]`; `why` says where the bound comes from."""

    name = "integer"

    def __init__(self, low: int, high: int, why: str) -> None:
        self.low, self.high, self.why = low, high, why

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        number = click.INT.convert(value, param, ctx)
        if not self.low <= number <= self.high:
            raise BadValue(
                f"{_name(param)} {number} is out of range: {self.low}..{self.high} ({self.why})"
            )
        return number


class Seconds(click.ParamType[float]):
    """A finite number of seconds, more than 0 and at most a day."""

    name = "seconds"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        seconds = click.FLOAT.convert(value, param, ctx)
        if not (math.isfinite(seconds) and 0 < seconds <= 86400):
            raise BadValue(f"{_name(param)} {value} must be more than 0 and at most 86400 s")
        return seconds


class NodeName(click.ParamType[str]):
    """A node name (see `flpg.submit.limits.check_name`)."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        return check_name(str(value), _name(param))


class NodeRef(click.ParamType[str]):
    """One node by id (digits, a positive 64-bit integer) or by name (see
    `flpg.submit.limits.check_name`; names are never all digits)."""

    name = "node"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        if text.isdigit():
            return str(NODE_ID.convert(text, param, ctx))
        return check_name(text, _name(param))


class NodeList(click.ParamType[str]):
    """`--nodes`: comma-separated ids or names."""

    name = "ids"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        parse_node_list(str(value))
        return str(value)


class KeyValues(click.ParamType[str]):
    """A `k=v ...` string (see `flpg.submit.config`), checked here and returned as given."""

    name = "k=v"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        parse_kv(str(value), _name(param))
        return str(value)


class ConfigArg(click.ParamType[str]):
    """A config option's value (`--run-config`, `-c`): `k=v ...` items or the path of a
    TOML file (see `flpg.submit.config.parse_config_arg`), checked here (the file read
    and parsed) and returned as given."""

    name = "k=v|file.toml"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        parse_config_arg(str(value), _name(param))
        return str(value)


class DatabaseUrl(click.ParamType[str]):
    """A PostgreSQL URL or connection string that libpq can parse."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        url = check_text(str(value), "--db")
        detail = url_problem(url)
        if detail is not None:
            raise ConfigError(
                f"--db {redact(url)} is not a PostgreSQL URL (postgresql://USER@HOST/DB) "
                f"or connection string: {redact(detail)}"
            ) from None
        return url


PRIORITY = Bounded(INT32_MIN, INT32_MAX, "a 32-bit integer column")
MAX_RESTARTS = Bounded(0, INT32_MAX, "a 32-bit integer column")
RUN_ID = Bounded(1, INT64_MAX, "run ids are positive 64-bit integers")
NODE_ID = Bounded(1, INT64_MAX, "node ids are positive 64-bit integers")
LIMIT = Bounded(1, INT64_MAX, "a positive 64-bit integer")
CONCURRENCY = Bounded(1, 1024, "messages one worker handles at once")
MAX_RUNS = Bounded(1, 1024, "ServerApps one exec runs at once")
VIRTUAL = Bounded(1, 100_000, "node ids one worker serves")
LOCAL_NODES = Bounded(1, 100, "node worker processes on this machine")
ROUNDS = Bounded(1, 100_000, "server rounds")
SECONDS = Seconds()
NODE_NAME = NodeName()
NODE_REF = NodeRef()
NODE_LIST = NodeList()
KEY_VALUES = KeyValues()
CONFIG_ARG = ConfigArg()
DATABASE_URL = DatabaseUrl()
