"""Row-level security and grants of the round-transient payload class (trust.v4):
the UNLOGGED chunk table, the crash marker and the function that makes a checkpoint's
arrays durable. Each forbidden thing is tried as the principal who must not do it, and
PostgreSQL refuses it. The world is tests/db/_trust_world.py's: message arrays are
transient there, checkpoint arrays durable."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._trust_world import World, affected, as_role, built_world, denied, rows, scalar

PARTICIPANTS = ("node_a", "alice", "sa1", "ca1", "exec", "aud")


@pytest.fixture(scope="module")
def world(module_db_url: str) -> Iterator[World]:
    with built_world(module_db_url) as w:
        yield w


def test_the_world_has_transient_and_durable_payloads(world: World) -> None:
    with as_role(world, "link") as conn:
        transient = scalar(conn, "SELECT count(*) FROM array_chunks_transient")
        durable = scalar(conn, "SELECT count(*) FROM array_chunks")
    assert transient >= 4 and durable >= 2


@pytest.mark.parametrize("who", [*PARTICIPANTS, "link"])
def test_no_one_changes_or_removes_the_crash_marker(world: World, who: str) -> None:
    denied(world, who, "DELETE FROM transient_marker")
    denied(world, who, "UPDATE transient_marker SET since = now()")
    assert rows(world, who, "SELECT id FROM transient_marker") == [(1,)]


@pytest.mark.parametrize("who", PARTICIPANTS)
def test_only_the_link_writes_the_crash_marker(world: World, who: str) -> None:
    denied(world, who, "INSERT INTO transient_marker (id) VALUES (1) ON CONFLICT DO NOTHING")


@pytest.mark.parametrize("who", ["node_a", "alice", "sa1", "ca1"])
def test_no_participant_changes_or_deletes_transient_chunks(world: World, who: str) -> None:
    denied(world, who, "UPDATE array_chunks_transient SET data = '\\x00'")
    denied(world, who, "DELETE FROM array_chunks_transient")


def test_a_node_cannot_add_chunks_to_an_array_it_did_not_write(world: World) -> None:
    for other in ("X1", "X2", "X3"):
        denied(
            world,
            "node_a",
            "INSERT INTO array_chunks_transient (array_id, seq, data) VALUES (%s, 7, '\\x00')",
            (world.arrays[other],),
        )


def test_a_clientapp_cannot_read_another_runs_transient_chunks(world: World) -> None:
    sql = "SELECT data FROM array_chunks_transient WHERE array_id = %s"
    assert rows(world, "ca1", sql, (world.arrays["X3"],)) == []  # run2's
    assert rows(world, "ca1", sql, (world.arrays["X1"],)) == [(b"\x01\x02\x03\x04",)]


@pytest.mark.parametrize("who", ["node_a", "alice", "ca1", "link", "exec", "aud"])
def test_only_serverapps_may_make_arrays_durable(world: World, who: str) -> None:
    denied(world, who, "SELECT flpg_checkpoint_durable(%s)", (world.runs["run1"],))


def test_a_serverapp_makes_durable_only_what_a_checkpoint_references(world: World) -> None:
    with as_role(world, "sa1") as conn:
        # run2's arrays (and run1's own uncheckpointed broadcasts) stay where they are.
        assert scalar(conn, "SELECT flpg_checkpoint_durable(%s)", (world.runs["run2"],)) == 0
        assert scalar(conn, "SELECT flpg_checkpoint_durable(%s)", (world.runs["run1"],)) == 0
    assert (
        affected(
            world,
            "link",
            "SELECT 1 FROM array_chunks_transient WHERE array_id = %s",
            (world.arrays["X3"],),
        )
        == 1
    )
