"""`flpg ui` over plain HTTP, as a real process on a real database: its JSON, its error
pages, that it writes nothing, and that a NOTIFY reaches an open event stream."""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.request
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest

from flpg.errors import DatabaseRefused
from flpg.states import LogStream, RunStatus
from flpg.store import logs as store_logs
from flpg.store import runs as store_runs
from flpg.store.credentials import load_credentials
from flpg.store.db import connect
from flpg.store.ui import Reader
from tests.e2e.harness import CliResult, Federation
from tests.ui.conftest import start_ui

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def fetch(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of one request; HTTP errors included."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def get_json(url: str) -> Any:
    status, kind, body = fetch(url)
    assert status == 200 and kind.startswith("application/json"), (status, body)
    return json.loads(body)


def new_run(url: str, app_name: str, config: dict[str, Any]) -> int:
    """A pending run (no nodes) submitted through the store, as `flpg run` stores one."""
    bundle = f"bundle of {app_name}".encode()
    with connect(url) as conn:
        return store_runs.create(
            conn,
            app_hash=hashlib.sha256(bundle).hexdigest(),
            app_name=app_name,
            bundle=bundle,
            run_config=config,
            node_ids=[],
        )


def test_json_filters_and_error_pages(federation: Federation) -> None:
    base = start_ui(federation)
    assert get_json(base + "api/runs") == {"runs": [], "users": [], "apps": []}
    assert get_json(base + "api/nodes") == []

    kept = new_run(federation.url, "alpha", {"num-server-rounds": 3})
    stopped = new_run(federation.url, "beta", {})
    with connect(federation.url) as conn:
        assert store_runs.request_stop(conn, stopped) == RunStatus.STOPPED
        store_runs.record_round(conn, kept, 1, "train", {"loss": 0.25, "acc": 0.5}, 2, 0)

    listed = get_json(base + "api/runs")
    assert [r["run_id"] for r in listed["runs"]] == [stopped, kept]
    assert listed["apps"] == ["alpha", "beta"] and len(listed["users"]) == 1
    first = listed["runs"][1]
    assert (first["status"], first["rounds_done"], first["rounds_total"]) == ("pending", 1, "3")
    by_status = get_json(base + "api/runs?status=stopped")["runs"]
    assert [(r["run_id"], r["reason"]) for r in by_status] == [(stopped, "stopped by user")]
    assert [r["run_id"] for r in get_json(base + "api/runs?q=ALP")["runs"]] == [kept]
    assert [r["run_id"] for r in get_json(base + f"api/runs?q={stopped}")["runs"]] == [stopped]
    assert get_json(base + "api/runs?app=beta&status=pending")["runs"] == []

    rounds = get_json(base + f"api/runs/{kept}/rounds")
    assert [(r["round"], r["phase"], r["metrics"]) for r in rounds] == [
        (1, "train", {"loss": 0.25, "acc": 0.5})
    ]
    detail = get_json(base + f"api/runs/{kept}")
    assert detail["app_name"] == "alpha" and detail["checkpoint_round"] is None
    assert get_json(base + f"api/runs/{kept}/selection") == {"nodes": [], "messages": []}

    status, kind, body = fetch(base + f"runs/{kept}")
    assert status == 200 and kind.startswith("text/html") and f'data-run="{kept}"' in body
    status, kind, body = fetch(base + "runs/424242")
    assert status == 404 and kind.startswith("text/html"), body
    assert "run 424242 does not exist" in body and "Traceback" not in body
    status, _, body = fetch(base + "api/runs/424242")
    assert status == 404 and "run 424242 does not exist" in json.loads(body)["error"]
    assert fetch(base + f"api/runs/{kept}/log?after=x")[0] == 400
    assert fetch(base + "no/such/page")[0] == 404
    status, _, body = fetch(base + "static/uPlot.iife.min.js")
    assert status == 200 and "uPlot" in body[:200]

    # Read-only: no route takes a write method.
    for path in ("api/runs", f"api/runs/{kept}", "events"):
        assert fetch(base + path, method="POST")[0] == 405


def next_event(stream: HTTPResponse) -> tuple[str, str]:
    """The next server-sent event `(name, data)`, comments skipped."""
    name, data = "message", ""
    while True:
        line = stream.readline().decode()
        assert line, "the event stream ended"
        line = line.rstrip("\n")
        if line == "" and (name != "message" or data):
            return name, data
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")


def wait_event(stream: HTTPResponse, wanted: tuple[str, str], limit: int = 50) -> None:
    seen = []
    for _ in range(limit):
        event = next_event(stream)
        if event == wanted:
            return
        seen.append(event)
    raise AssertionError(f"no {wanted} among {seen}")


def test_a_notify_reaches_an_open_event_stream(federation: Federation) -> None:
    # The safety-net poll is an hour: only LISTEN/NOTIFY can deliver these events.
    base = start_ui(federation, "--poll", "3600")
    with urllib.request.urlopen(base + "events", timeout=60) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert next_event(stream) == ("hello", "")
        run_id = new_run(federation.url, "gamma", {})  # NOTIFY flpg_exec
        wait_event(stream, ("runs", ""))
        with connect(federation.url) as conn:  # NOTIFY flpg_log_<run>
            store_logs.append(conn, run_id, [(LogStream.STDOUT, "hello from the ServerApp")])
        wait_event(stream, ("log", str(run_id)))
    lines = get_json(base + f"api/runs/{run_id}/log?after=0")["lines"]
    assert [(x["stream"], x["line"]) for x in lines] == [("stdout", "hello from the ServerApp")]
    after = get_json(base + f"api/runs/{run_id}/log?after={lines[0]['id']}")
    assert after == {"lines": [], "more": False}


def test_a_users_dashboard_shows_only_their_runs(federation: Federation, tmp_path: Path) -> None:
    # Names of this test's own: the federation's database may already hold other users.
    tag = tmp_path.name[-8:].replace("-", "_").lower()
    alice, bob = f"alice_{tag}", f"bob_{tag}"
    creds = {}
    for name in (alice, bob):
        creds[name] = tmp_path / f"{name}.json"
        federation.cli("user", "add", name, "--out", str(creds[name]))
    alices = new_run(load_credentials(creds[alice]), "alice-app", {})
    bobs = new_run(load_credentials(creds[bob]), "bob-app", {})

    base = start_ui(federation, "--credentials", str(creds[alice]))
    listed = get_json(base + "api/runs")
    assert [(r["run_id"], r["user"]) for r in listed["runs"]] == [(alices, alice)]
    assert (listed["users"], listed["apps"]) == ([alice], ["alice-app"])
    assert fetch(base + f"runs/{bobs}")[0] == 404
    assert fetch(base + f"api/runs/{bobs}")[0] == 404
    assert get_json(base + f"api/runs/{bobs}/log?after=0")["lines"] == []
    assert get_json(base + f"api/runs/{alices}")["user"] == alice


def test_the_dashboards_connections_refuse_writes(db_url: str) -> None:
    reader = Reader(db_url, size=1)
    try:
        with pytest.raises(DatabaseRefused, match="read-only"), reader.connection() as conn:
            conn.execute("CREATE TABLE ui_must_not_write (x int)")
        with reader.connection() as conn:  # the same connection, still read-only
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
    finally:
        reader.close()


def one_line_error(result: CliResult, *needles: str) -> None:
    assert result.stderr.startswith("flpg: error: "), result
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result
    for needle in needles:
        assert needle in result.stderr, result


def test_a_port_in_use_and_a_database_that_is_down_are_one_line(
    federation: Federation,
) -> None:
    base = start_ui(federation)
    port = base.rsplit(":", 1)[1].strip("/")
    taken = federation.cli("ui", "--port", port, check=False, timeout=60)
    one_line_error(taken, f"port {port} on 127.0.0.1 is in use", "--port")
    assert taken.returncode == 5
    down = federation.cli(
        "ui", "--port", "0", "--db", "postgresql://nobody@127.0.0.1:1/flpg", check=False
    )
    one_line_error(down, "cannot connect to the database")
    assert down.returncode == 3
