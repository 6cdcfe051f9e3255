"""The migrated schema speaks `flpg.states`: its enum types have the StrEnums' labels in
their order, the constraints the store translates by name exist, and the runs'
terminal-status CHECK names exactly `TERMINAL`. Read-only, on one module database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum

import pytest

from flpg import states
from flpg.states import TERMINAL, LogStream, MessageState, NodeStatus, RunStatus
from flpg.store.db import Connection, connect

ENUM_TYPES = [
    ("run_status", RunStatus),
    ("message_state", MessageState),
    ("node_status", NodeStatus),
    ("log_stream", LogStream),
]

CONSTRAINT_NAMES = {
    name: value
    for name, value in vars(states).items()
    if name.isupper() and isinstance(value, str) and value.startswith(("fk_", "ck_", "uq_", "pk_"))
}
"""Every constraint-name constant of `flpg.states` (found by its naming convention)."""


@pytest.fixture(scope="module")
def conn(module_db_url: str) -> Iterator[Connection]:
    with connect(module_db_url, application_name="flpg-test-states") as c:
        yield c


@pytest.mark.parametrize(("type_name", "enum"), ENUM_TYPES, ids=[t for t, _ in ENUM_TYPES])
def test_each_strenum_is_its_enum_type_in_order(
    conn: Connection, type_name: str, enum: type[StrEnum]
) -> None:
    row = conn.execute(f"SELECT enum_range(NULL::{type_name})::text[]").fetchone()
    assert row is not None
    assert row[0] == [s.value for s in enum]


def test_a_member_is_sent_as_its_label(conn: Connection) -> None:
    row = conn.execute(
        "SELECT %s::run_status::text, %s::log_stream::text",
        [RunStatus.FAILED, LogStream.EVENT],
    ).fetchone()
    assert row == ("failed", "event")
    # Uncast, it compares with an enum column as a literal label would.
    row = conn.execute("SELECT 'event'::log_stream = %s", [LogStream.EVENT]).fetchone()
    assert row == (True,)


def test_the_constraint_names_exist(conn: Connection) -> None:
    # The scan sees the constants the store matches on.
    assert set(CONSTRAINT_NAMES.values()) >= states.SELECTION_FKS
    found = {
        r[0]
        for r in conn.execute(
            "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE n.nspname = current_schema() AND conname = ANY(%(names)s)"
            " UNION SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND relname = ANY(%(names)s)",
            {"names": list(CONSTRAINT_NAMES.values())},
        )
    }
    assert found == set(CONSTRAINT_NAMES.values())


def test_the_terminal_check_names_exactly_terminal(conn: Connection) -> None:
    row = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
        " WHERE conname = 'ck_runs_finished_at_iff_terminal'"
    ).fetchone()
    assert row is not None
    assert set(re.findall(r"'(\w+)'::run_status", row[0])) == TERMINAL
