"""What the dashboard's hub tells browsers for each notification and each poll (pure:
no database, no server)."""

from __future__ import annotations

from flpg.store.ui import WatchState
from flpg.ui.events import changes, events_of


def test_each_channel_becomes_the_events_of_the_pages_it_changes() -> None:
    watched = {7}
    assert events_of("flpg_exec", "7", watched) == {("runs", "")}
    assert events_of("flpg_log_7", "", watched) == {("runs", ""), ("run", "7"), ("log", "7")}
    assert events_of("flpg_run_7", "", watched) == {("run", "7"), ("nodes", "")}
    assert events_of("flpg_node_3", "7", watched) == {("nodes", ""), ("run", "7")}


def test_a_run_the_role_does_not_see_is_never_named() -> None:
    watched = {7}
    assert events_of("flpg_log_8", "", watched) == set()
    assert events_of("flpg_run_8", "", watched) == set()
    assert events_of("flpg_node_3", "8", watched) == {("nodes", "")}
    assert events_of("flpg_other", "", watched) == set()


def state(runs: str, nodes: str, prints: dict[int, dict[str, object]]) -> WatchState:
    return WatchState(list(prints), [1], (runs, 1), nodes, prints)


def test_a_poll_reports_only_what_changed() -> None:
    run = {"run_id": 7, "status": "running", "rounds": 1, "log_id": 10}
    before = state("a", "n", {7: run})
    assert changes(None, before) == set()
    assert changes(before, state("a", "n", {7: run})) == set()
    assert changes(before, state("b", "n", {7: run})) == {("runs", "")}
    assert changes(before, state("a", "m", {7: run})) == {("nodes", "")}
    more_rounds = {**run, "rounds": 2}
    assert changes(before, state("a", "n", {7: more_rounds})) == {("run", "7"), ("runs", "")}
    more_log = {**run, "log_id": 11}
    assert changes(before, state("a", "n", {7: more_log})) == {
        ("run", "7"),
        ("runs", ""),
        ("log", "7"),
    }
