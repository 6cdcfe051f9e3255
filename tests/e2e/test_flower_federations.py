"""Flower's `flwr run APP FEDERATION` and TOML-file `--node-config` on the real `flpg`
command (issue 15): federations read from the app's `[tool.flwr.federations]`, a node's
config from a TOML file with its tables flattened."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.harness import APPS, Federation
from tests.e2e.test_cli_errors import assert_one_line_error

pytestmark = pytest.mark.e2e

UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none?connect_timeout=2"
"""A database no test can reach: where `$FLPG_DATABASE_URL` points when a test shows
that the federation's address was used instead."""


def flower_app(tmp_path: Path, url: str) -> Path:
    """The deterministic app with Flower's federations table: a simulation default,
    one federation at the test's database, one at a SuperLink address."""
    target = tmp_path / "app"
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = target / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + f"""
[tool.flwr.federations]
default = "local-simulation"

[tool.flwr.federations.local-simulation]
options.num-supernodes = 2

[tool.flwr.federations.pg]
address = "{url}"

[tool.flwr.federations.remote]
address = "127.0.0.1:9093"
insecure = true
"""
    )
    return target


@pytest.fixture
def fed(federation: Federation) -> Federation:
    federation.sql("INSERT INTO nodes (name, node_config) VALUES ('n0', '{}')")
    return federation


def runs(fed: Federation) -> int:
    count: int = fed.scalar("SELECT count(*) FROM runs")
    return count


def test_a_named_federation_with_a_postgresql_address_is_the_database(
    fed: Federation, tmp_path: Path
) -> None:
    app = flower_app(tmp_path, fed.url)
    elsewhere = {**fed.env, "FLPG_DATABASE_URL": UNREACHABLE}
    done = fed.cli("run", str(app), "pg", "--format", "json", env=elsewhere)
    run_id = int(done.json()["run_id"])
    assert fed.scalar("SELECT app_name FROM runs WHERE id = %s", [run_id]) == "e2e-deterministic"


def test_the_default_simulation_federation_uses_the_default_database(
    fed: Federation, tmp_path: Path
) -> None:
    app = flower_app(tmp_path, UNREACHABLE)
    before = runs(fed)
    fed.submit(app)  # default "local-simulation": no address, so $FLPG_DATABASE_URL
    fed.submit(app, "--db", fed.url)
    assert runs(fed) == before + 2


def test_bad_federations_are_one_line_with_exit_2_and_nothing_written(
    fed: Federation, tmp_path: Path
) -> None:
    app = flower_app(tmp_path, fed.url)
    before = runs(fed)
    unknown = fed.cli("run", str(app), "nope", check=False)
    assert_one_line_error(
        unknown, "FEDERATION 'nope' is not declared", "(federations: local-simulation, pg, remote)"
    )
    remote = fed.cli("run", str(app), "remote", check=False)
    assert_one_line_error(remote, "federation 'remote'", "neither a PostgreSQL URL")
    both = fed.cli("run", str(app), "pg", "--db", fed.url, check=False)
    assert_one_line_error(both, "FEDERATION 'pg' and --db/--credentials each name a database")
    assert {r.returncode for r in (unknown, remote, both)} == {2}
    assert runs(fed) == before


def test_node_config_from_a_toml_file_is_flattened(federation: Federation, tmp_path: Path) -> None:
    fed = federation
    config = tmp_path / "node.toml"
    config.write_text('partition-id = 1\nnum-partitions = 2\n[data]\npath = "/srv/x"\n')
    fed.start("n1", "node", "--name", "n1", "--node-config", str(config))
    (online,) = [n for n in fed.wait_nodes_online(1) if n["name"] == "n1"]
    assert online["node_config"] == {"partition-id": 1, "num-partitions": 2, "data.path": "/srv/x"}

    bad = tmp_path / "bad.toml"
    bad.write_text("partition-id = \n")
    result = fed.cli("node", "--name", "n2", "--node-config", str(bad), check=False)
    assert_one_line_error(result, f"--node-config file {bad} is not valid TOML")
    assert result.returncode == 2
    missing = fed.cli("node", "--name", "n2", "--node-config", "gone.toml", check=False)
    assert_one_line_error(missing, "--node-config file gone.toml: cannot read it")
