"""Flower's command-line habits on the real `flpg` command (issue 15): `--run-config` /
`-c` repeatable, with `k=v` strings or TOML files; `flpg run` without APP_DIR; `flpg
list`; `flpg ls --run-id`; `flpg log --stream/--show`; `--format json` with Flower's
keys beside flpg's. Every case runs the real CLI against a real database."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import APPS, Federation, FinishedRun, wait_for
from tests.e2e.test_bad_input import snapshot
from tests.e2e.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e

TYPED_CONFIG = """
lr = 0.1
name = "plain"
cols = "age"
flag = false

[tool.flpg.app.config.model]
depth = 2
"""
FLOWER_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$")
"""How `flwr ls --format json` writes a timestamp."""


@pytest.fixture(scope="module")
def typed_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deterministic app with defaults of several types and a nested table."""
    target = tmp_path_factory.mktemp("apps") / "typed"
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = target / "pyproject.toml"
    pyproject.write_text(pyproject.read_text() + TYPED_CONFIG)
    return target


@pytest.fixture
def fed(federation: Federation) -> Federation:
    """Two registered nodes and no worker: a run is stored and stays pending."""
    federation.sql("INSERT INTO nodes (name, node_config) VALUES ('n0', '{}'), ('n1', '{}')")
    return federation


def stored_config(fed: Federation, run_id: int) -> dict[str, object]:
    config: dict[str, object] = fed.scalar("SELECT run_config FROM runs WHERE id = %s", [run_id])
    return config


# ---------------------------------------------------------------- --run-config / -c


def test_run_config_and_c_repeat_mix_files_and_the_later_one_wins(
    fed: Federation, typed_app: Path, tmp_path: Path
) -> None:
    overrides = tmp_path / "overrides.toml"
    overrides.write_text('lr = 0.5\nname = "from file"\n[model]\ndepth = 7\n')
    run_id = fed.submit(
        typed_app,
        "-c",
        "lr=0.2 cols='age,bmi' num-server-rounds=5",
        "--run-config",
        str(overrides),
        "-c",
        "name='5'",
    )
    assert stored_config(fed, run_id) == {
        "num-server-rounds": 5,
        "lr": 0.5,  # the file came after `lr=0.2`
        "name": "5",  # quotes kept: a string, as in Flower
        "cols": "age,bmi",
        "flag": False,
        "model.depth": 7,  # the file's [model] table, flattened
    }


def test_a_quoted_url_and_a_path_are_strings(fed: Federation, typed_app: Path) -> None:
    url = "https://example.org/data.csv?x=1&y=2"
    run_id = fed.submit(typed_app, "--run-config", f"name=\"{url}\" cols='/data/x'")
    config = stored_config(fed, run_id)
    assert (config["name"], config["cols"]) == (url, "/data/x")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["-c", "lr=0.2", "-c", "num-server-rounds=abc"],
            [
                "--run-config argument 2:",
                "num-server-rounds must be an integer",
                "default 3",
                '"abc"',
            ],
        ),
        (["-c", "num-server-rounds='5'"], ["--run-config:", "an integer", '"5"']),
        (
            ["-c", "lr=0.2", "-c", "depth=1"],
            ["--run-config argument 2:", "'depth'", "not in [tool.flpg.app.config]", "model.depth"],
        ),
        (
            ["-c", "FILE:[model]\ndepth = 2.5\n"],
            ["--run-config file FILE:", "model.depth", "an integer", "2.5"],
        ),
        (["-c", "FILE:flag = 1\n"], ["--run-config file FILE:", "flag", "a boolean", "1"]),
        (["-c", "FILE:lr = \n"], ["--run-config file FILE is not valid TOML:", "line 1"]),
        (["-c", "FILE:lr = 0.1\nlr = 0.2\n"], ["FILE is not valid TOML", "line 2"]),
        (["-c", "FILE:since = 1979-05-27\n"], ["FILE", "since", "date"]),
        (["-c", "MISSING"], ["--run-config file MISSING: cannot read it"]),
    ],
    ids=[
        "type-in-2nd",
        "quoted-int",
        "unknown-in-2nd",
        "type-in-file",
        "bool-in-file",
        "toml-no-value",
        "toml-key-twice",
        "date-in-file",
        "missing-file",
    ],
)
def test_bad_run_config_is_one_line_naming_its_source_and_nothing_is_written(
    fed: Federation, typed_app: Path, tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    path = tmp_path / "over.toml"
    argv = []
    for arg in args:
        if arg.startswith("FILE:"):
            path.write_text(arg[5:])
            arg = str(path)
        argv.append(str(tmp_path / "nope.toml") if arg == "MISSING" else arg)
    needles = [
        n.replace("FILE", str(path)).replace("MISSING", str(tmp_path / "nope.toml"))
        for n in needles
    ]
    before = snapshot(fed.url)
    result = fed.cli("run", str(typed_app), *argv, check=False)
    assert_one_line_error(result, *needles)
    assert result.returncode == 2, result
    assert snapshot(fed.url) == before


def test_node_config_takes_flowers_readme_forms(federation: Federation) -> None:
    federation.start(
        "node-a", "node", "--name", "a", "--node-config", "partition-id=0 num-partitions=2"
    )
    federation.start("node-b", "node", "--name", "b", "--node-config", 'path="/data/x"')
    rows = wait_for(
        lambda: (
            len(got := federation.sql("SELECT name, node_config FROM nodes ORDER BY name")) == 2
            and got
        ),
        30,
        "both nodes to register",
    )
    assert rows == [("a", {"partition-id": 0, "num-partitions": 2}), ("b", {"path": "/data/x"})]


# ---------------------------------------------------------------- flpg run [APP_DIR]


def run_in(fed: Federation, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [fed.flpg, *args], env=fed.env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_run_without_app_dir_runs_the_current_directory(fed: Federation, typed_app: Path) -> None:
    done = run_in(fed, typed_app, "run", "-c", "lr=0.3", "--format", "json")
    assert done.returncode == 0, done
    doc = json.loads(done.stdout)
    app_hash = fed.scalar("SELECT app_hash FROM runs WHERE id = %s", [doc["run_id"]])
    assert doc == {
        "run_id": doc["run_id"],
        "app": "e2e-deterministic",
        "app_hash": app_hash,
        "nodes": [1, 2],
        "success": True,
        "run-id": doc["run_id"],
        "fab-name": "e2e-deterministic",
        "fab-hash": app_hash[:8],
    }
    assert stored_config(fed, doc["run_id"])["lr"] == 0.3


def test_run_without_app_dir_outside_an_app_is_one_line(fed: Federation, tmp_path: Path) -> None:
    done = run_in(fed, tmp_path, "run")
    lines = done.stderr.splitlines()
    assert done.returncode == 2 and done.stdout == "", done
    assert len(lines) == 1 and lines[0].startswith("flpg: error: "), done
    assert str(tmp_path) in lines[0] and "pyproject.toml" in lines[0]
    assert fed.scalar("SELECT count(*) FROM runs") == 0


# ---------------------------------------------------------------- ls / list / stop


def test_list_is_ls_and_ls_carries_flowers_keys(fed: Federation) -> None:
    first = fed.submit(APPS / "deterministic")
    second = fed.submit(APPS / "deterministic")
    assert fed.cli("list").stdout == fed.cli("ls").stdout
    listed = fed.cli("list", "--format", "json").json()
    assert [r["run_id"] for r in listed] == [second, first]
    run = listed[0]
    submitted = fed.scalar(
        "SELECT to_char(submitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || 'Z' "
        "FROM runs WHERE id = %s",
        [second],
    )
    assert {k: run[k] for k in ("run-id", "fab-name", "status", "elapsed")} == {
        "run-id": second,
        "fab-name": "e2e-deterministic",
        "status": "pending",
        "elapsed": "00:00:00",
    }
    assert FLOWER_TIME.match(run["created-at"]) and run["created-at"] == submitted
    assert (run["running-at"], run["finished-at"]) == ("N/A", "N/A")
    assert run["app"] == "e2e-deterministic" and run["submitted_at"]  # flpg's keys stay
    app_hash = fed.scalar("SELECT app_hash FROM runs WHERE id = %s", [second])
    assert (run["app_hash"], run["fab-hash"]) == (app_hash, app_hash[:8])
    assert (run["fab-id"], run["fab-version"], run["status-details"]) == (
        "e2e-deterministic",
        "",
        "",
    )


def test_ls_run_id_shows_one_run(fed: Federation) -> None:
    first = fed.submit(APPS / "deterministic")
    fed.submit(APPS / "deterministic")
    one = fed.cli("ls", "--run-id", str(first), "--format", "json").json()
    full = {r["run_id"]: r for r in fed.runs()}
    assert one == [full[first]]
    table = fed.cli("ls", "--run-id", str(first)).stdout.splitlines()
    assert len(table) == 2 and table[1].split()[:3] == [str(first), "e2e-deterministic", "pending"]
    missing = fed.cli("ls", "--run-id", "999", check=False)
    assert_one_line_error(missing, "run 999 does not exist")
    assert missing.returncode == 4
    both = fed.cli("ls", "--runs", "--run-id", str(first), check=False)
    assert_one_line_error(both, "--runs", "--run-id")
    assert both.returncode == 2


def test_stop_format_json_is_flowers_document_with_the_state(fed: Federation) -> None:
    run_id = fed.submit(APPS / "deterministic")
    doc = fed.cli("stop", str(run_id), "--format", "json").json()
    assert doc == {"success": True, "run-id": run_id, "run_id": run_id, "status": "stopped"}
    again = fed.cli("stop", str(run_id), "--format", "json", check=False)
    assert_one_line_error(again, f"run {run_id} already ended (stopped)")
    assert again.returncode == 5


# ---------------------------------------------------------------- log --stream / --show


def test_log_streams_by_default_and_show_prints_what_is_stored(
    finished_run: FinishedRun,
) -> None:
    fed, run_id = finished_run.fed, finished_run.run_id
    shown = fed.cli("log", str(run_id), "--show")
    assert "FINAL {" in shown.stdout and "run 1 finished" not in shown.stdout
    streamed = fed.cli("log", str(run_id))
    assert streamed.stdout == shown.stdout + f"run {run_id} finished\n"
    for flag in ("--stream", "-f", "--follow"):
        assert fed.cli("log", str(run_id), flag).stdout == streamed.stdout, flag


def test_log_of_a_run_that_did_not_finish_exits_0_as_flowers(fed: Federation) -> None:
    run_id = fed.submit(APPS / "deterministic")
    fed.cli("stop", str(run_id))
    result = fed.cli("log", str(run_id))
    assert (result.returncode, result.stdout) == (0, f"run {run_id} stopped: stopped by user\n")


def test_log_follows_a_run_until_it_ends(federation: Federation) -> None:
    fed = federation
    fed.link()
    for i in range(2):
        fed.node(f"node{i}", f"partition-id={i} num-partitions=2")
    fed.wait_nodes_online(2)
    run_id = fed.submit(APPS / "deterministic", "-c", "num-server-rounds=1")
    follower = subprocess.Popen(
        [fed.flpg, "log", str(run_id)],
        env=fed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        fed.exec()  # the run launches only now: the follower was there before
        out, err = follower.communicate(timeout=90)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert any(line.startswith("FINAL {") for line in lines), out
    assert lines[-1] == f"run {run_id} finished", out


# ---------------------------------------------------------------- flpg nodes rm


def test_nodes_still_lists_and_rm_refuses_unknown_or_malformed_nodes(fed: Federation) -> None:
    assert [n["name"] for n in fed.nodes()] == ["n0", "n1"]
    table = fed.cli("nodes").stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "NAME", "STATUS"] and len(table) == 3
    before = snapshot(fed.url)
    for args, code, needles in (
        (["99"], 4, ["node '99' is not registered", "1:n0, 2:n1"]),
        (["nosuch"], 4, ["node 'nosuch' is not registered"]),
        (["0"], 2, ["NODE", "0", "range"]),
        (["a,b"], 2, ["NODE", "commas"]),
        ([], 2, ["NODE"]),
    ):
        result = fed.cli("nodes", "rm", *args, check=False)
        assert_one_line_error(result, *needles)
        assert result.returncode == code, result
    assert snapshot(fed.url) == before


def test_nodes_rm_refuses_an_online_node_and_removes_an_offline_one_keeping_history(
    federation: Federation,
) -> None:
    fed = federation
    worker = fed.node("site-a", "partition-id=0")
    (node,) = fed.wait_nodes_online(1)
    row = "SELECT id, name, status::text, node_config, labels, registered_at FROM nodes"
    before_row = fed.sql(row)  # its worker heart-beats: last_seen_at moves on
    online = fed.cli("nodes", "rm", "site-a", check=False)
    assert_one_line_error(online, f"node {node['id']}:site-a is online", "offline")
    assert online.returncode == 5
    assert fed.sql(row) == before_row

    fed.stop([worker])  # a worker that stops cleanly marks its node offline
    wait_for(lambda: fed.nodes()[0]["status"] == "offline", 30, "the node to be offline")
    # by id, and with --db given to the group
    removed = fed.cli("nodes", "--db", fed.url, "rm", str(node["id"]))
    assert removed.stdout == f"node {node['id']}:site-a removed (its row and history are kept)\n"
    assert fed.nodes() == []  # no longer listed (nor selected by `flpg run`)
    assert fed.sql("SELECT name, removed_at IS NOT NULL FROM nodes") == [("site-a", True)]
    again = fed.cli("nodes", "rm", "site-a", check=False)
    assert_one_line_error(again, "node 'site-a' is not registered")
    assert again.returncode == 4

    # A worker registering the name again brings it back, with the same id.
    fed.start("site-a-again", "node", "--name", "site-a", "--node-config", "partition-id=0")
    (back,) = fed.wait_nodes_online(1)
    assert back["id"] == node["id"]


def test_nodes_rm_refuses_an_enrolled_node(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    fed.cli("node", "enroll", "site-b", "--out", str(tmp_path / "b.json"))  # offline until it beats
    refused = fed.cli("nodes", "rm", "site-b", check=False)
    assert_one_line_error(refused, "site-b is enrolled", "flpg node revoke site-b")
    assert refused.returncode == 5


def test_ls_run_id_shows_a_user_only_their_own_runs(fed: Federation, tmp_path: Path) -> None:
    creds = {}
    for name in ("alice", "bob"):
        creds[name] = str(tmp_path / f"{name}.json")
        fed.cli("user", "add", name, "--out", creds[name])
    run_id = fed.submit(APPS / "deterministic", "--credentials", creds["alice"])
    mine = fed.cli(
        "ls", "--run-id", str(run_id), "--credentials", creds["alice"], "--format", "json"
    ).json()
    assert [r["run-id"] for r in mine] == [run_id]
    hidden = fed.cli("list", "--run-id", str(run_id), "--credentials", creds["bob"], check=False)
    assert_one_line_error(hidden, f"run {run_id} does not exist")
    assert hidden.returncode == 4
