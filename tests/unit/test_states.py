"""`flpg.states` names each state and channel once: the models' enum types are built
from it, and the channels the SQL of `sql/` notifies on are the ones it names.

(tests/db/test_states.py checks the migrated database against the same names.)
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

import pytest

from flpg import states
from flpg.models import LOG_STREAM, MESSAGE_STATE, NODE_STATUS, RUN_STATUS
from flpg.states import (
    EXEC_CHANNEL,
    TERMINAL,
    LogStream,
    MessageState,
    NodeStatus,
    RunStatus,
    log_channel,
    node_channel,
    run_channel,
)
from flpg.store.resources import sql_dir

ENUM_TYPES = [
    (RunStatus, RUN_STATUS),
    (MessageState, MESSAGE_STATE),
    (NodeStatus, NODE_STATUS),
    (LogStream, LOG_STREAM),
]

# `pg_notify('literal'` optionally followed by `||` (a channel name built from an id).
PG_NOTIFY = re.compile(r"pg_notify\(\s*'([^']*)'\s*(\|\|)?", re.IGNORECASE)
# A NOTIFY statement (rather than the function): the scan above would miss it.
NOTIFY_STATEMENT = re.compile(r"(^|;)\s*NOTIFY\s", re.IGNORECASE | re.MULTILINE)


@pytest.mark.parametrize(
    ("states_enum", "sa_enum"), ENUM_TYPES, ids=[e.name for _, e in ENUM_TYPES]
)
def test_the_models_enum_types_are_the_strenums(
    states_enum: type[StrEnum], sa_enum: object
) -> None:
    assert list(sa_enum.enums) == [s.value for s in states_enum]  # type: ignore[attr-defined]


def test_terminal_is_the_ended_run_statuses() -> None:
    assert {RunStatus.FINISHED, RunStatus.FAILED, RunStatus.STOPPED} == TERMINAL
    assert "failed" in TERMINAL and "running" not in TERMINAL  # plain strings compare too
    assert states.STOPPING not in set(RunStatus)


def _code(path: Path) -> str:
    """The SQL of `path` without its `--` comments."""
    return "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())


def _sql_channels() -> set[tuple[str, bool]]:
    """`(literal, built from an id)` of every pg_notify in sql/ (views included)."""
    found: set[tuple[str, bool]] = set()
    for path in sorted(sql_dir().rglob("*.sql")):
        code = _code(path)
        assert not NOTIFY_STATEMENT.search(code), f"{path.name}: use pg_notify, not NOTIFY"
        found |= {(literal, bool(concat)) for literal, concat in PG_NOTIFY.findall(code)}
    return found


def _prefix(channel: Callable[[int], str]) -> str:
    """The constant part of a per-id channel name."""
    name = channel(12345)
    assert name.endswith("12345"), name
    return name.removesuffix("12345")


def test_the_sql_notifies_exactly_on_the_python_channels() -> None:
    python = {(EXEC_CHANNEL, False)} | {
        (_prefix(channel), True) for channel in (node_channel, run_channel, log_channel)
    }
    assert _sql_channels() == python


def test_the_channel_scan_reads_what_it_should() -> None:
    """The regex sees both forms used in sql/ (a fixed name and a name per id)."""
    sample = "SELECT pg_notify('flpg_exec', x);\nSELECT pg_notify( 'flpg_run_' || run_id, '')"
    assert set(PG_NOTIFY.findall(sample)) == {("flpg_exec", ""), ("flpg_run_", "||")}
    assert NOTIFY_STATEMENT.search("SELECT 1;\nNOTIFY flpg_exec;")
    assert not NOTIFY_STATEMENT.search("SELECT pg_notify('flpg_exec', '')")


def test_states_imports_only_the_standard_library() -> None:
    """The CLI and the store import it: it must pull in no SQLAlchemy nor psycopg."""
    tree = ast.parse(Path(states.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}
