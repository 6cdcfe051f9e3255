"""Bad input to the real `flpg` command: one line on stderr, a non-zero exit, and
nothing written to the database."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.harness import APPS, CliResult, Federation

pytestmark = pytest.mark.e2e

TABLES = ("apps", "runs", "run_nodes", "messages", "arrays", "run_logs")


def assert_one_line_error(result: CliResult, *needles: str, stdout: bool = False) -> str:
    """A non-zero exit, nothing on stdout (unless `stdout`), and exactly one non-empty
    `flpg: error:` line on stderr that mentions every needle."""
    assert result.returncode != 0, result
    if not stdout:
        assert result.stdout == "", result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].strip(), result
    line = lines[0]
    assert line.startswith("flpg: error: "), result
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def counts(fed: Federation) -> dict[str, int]:
    return {t: int(fed.scalar(f"SELECT count(*) FROM {t}")) for t in TABLES}


@pytest.fixture
def registered(federation: Federation) -> Federation:
    """A database with one registered node, so a valid submission would be stored."""
    federation.sql("INSERT INTO nodes (name, node_config) VALUES ('n0', '{}')")
    return federation


def copy_app(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(APPS / "deterministic", target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


def set_component(app: Path, key: str, ref: str) -> None:
    pyproject = app / "pyproject.toml"
    lines = pyproject.read_text().splitlines()
    out = [f'{key} = "{ref}"' if line.startswith(f"{key} = ") else line for line in lines]
    pyproject.write_text("\n".join(out) + "\n")


def test_app_directory_that_does_not_exist(registered: Federation, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-app"
    result = registered.cli("run", str(missing), check=False)
    assert_one_line_error(result, str(missing), "does not exist")
    assert result.returncode == 2
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_directory_without_pyproject(registered: Federation, tmp_path: Path) -> None:
    app = tmp_path / "empty-app"
    app.mkdir()
    (app / "server_app.py").write_text("x = 1\n")
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, str(app), "pyproject.toml")
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_pyproject_without_components(registered: Federation, tmp_path: Path) -> None:
    app = tmp_path / "no-components"
    app.mkdir()
    (app / "pyproject.toml").write_text('[project]\nname = "x"\n')
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, "[tool.flpg.app.components]")
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_component_module_raising_import_error(registered: Federation, tmp_path: Path) -> None:
    app = copy_app(tmp_path, "import-error")
    (app / "det_app" / "broken.py").write_text(
        'raise ImportError("this app needs the fake package torchlet")\n'
    )
    set_component(app, "serverapp", "det_app.broken:app")
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(
        result, "det_app.broken:app", "ImportError", "this app needs the fake package torchlet"
    )
    assert "Traceback" not in result.stderr
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_component_module_that_does_not_exist(registered: Federation, tmp_path: Path) -> None:
    app = copy_app(tmp_path, "missing-module")
    set_component(app, "clientapp", "det_app.nowhere:app")
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, "det_app.nowhere:app", "ModuleNotFoundError")
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_component_attribute_that_does_not_exist(registered: Federation, tmp_path: Path) -> None:
    app = copy_app(tmp_path, "missing-attribute")
    set_component(app, "clientapp", "det_app.client_app:missing_app")
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, "det_app.client_app:missing_app", "missing_app")
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_component_of_the_wrong_type(registered: Federation, tmp_path: Path) -> None:
    app = copy_app(tmp_path, "wrong-type")
    set_component(app, "serverapp", "det_app.client_app:app")  # a ClientApp
    result = registered.cli("run", str(app), check=False)
    assert_one_line_error(result, "det_app.client_app:app", "ServerApp")
    assert counts(registered) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize(
    ("run_config", "needles"),
    [
        ("lr", ["'lr'", "key=value"]),
        ("lr=0.1 x", ["'x'", "key=value"]),
        ('lr="0.1', ["--run-config"]),
        ("num-server-rounds=", ["'num-server-rounds'", "no value"]),
        ("lr=0.1", ["'lr'", "not in [tool.flpg.app.config]", "num-server-rounds"]),
    ],
    ids=["no-equals", "trailing-word", "open-quote", "empty-value", "unknown-key"],
)
def test_run_config_that_does_not_parse(
    registered: Federation, run_config: str, needles: list[str]
) -> None:
    result = registered.cli(
        "run", str(APPS / "deterministic"), "--run-config", run_config, check=False
    )
    assert_one_line_error(result, *needles)
    assert result.returncode == 2
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_no_node_registered(federation: Federation) -> None:
    result = federation.cli("run", str(APPS / "deterministic"), check=False)
    assert_one_line_error(result, "no nodes are registered")
    assert counts(federation) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize("command", ["log", "stop"])
def test_run_that_does_not_exist(registered: Federation, command: str) -> None:
    result = registered.cli(command, "999", check=False)
    assert_one_line_error(result, "run 999 does not exist")
    assert result.returncode == 4
    assert counts(registered) == dict.fromkeys(TABLES, 0)


def test_stop_a_run_that_already_ended(registered: Federation) -> None:
    registered.cli("run", str(APPS / "deterministic"))
    assert registered.cli("stop", "1").stdout.strip() == "run 1: stopped"  # pending: at once
    before = counts(registered)
    result = registered.cli("stop", "1", check=False)
    assert_one_line_error(result, "run 1 already ended (stopped)")
    assert result.returncode == 5
    assert counts(registered) == before


UNREACHABLE = "postgresql://u:secret@127.0.0.1:1/x"


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["nodes"],
        ["log", "1"],
        ["stop", "1"],
        ["run", str(APPS / "deterministic")],
        ["db", "upgrade"],
        ["db", "status"],
    ],
    ids=lambda a: "-".join(a[:2]).replace(str(APPS / "deterministic"), "app"),
)
def test_unreachable_database_is_named_without_its_password(
    federation: Federation, args: list[str]
) -> None:
    result = federation.cli(*args, "--db", UNREACHABLE, check=False, timeout=30)
    # `db status` names the database on stdout before it finds it unreachable.
    line = assert_one_line_error(result, "127.0.0.1:1", "u:***@", stdout=args == ["db", "status"])
    assert result.returncode == 3
    assert "secret" not in result.stdout + result.stderr, line
    assert federation.scalar("SELECT count(*) FROM runs") == 0


def test_unreachable_database_from_the_environment(federation: Federation) -> None:
    env = {**federation.env, "FLPG_DATABASE_URL": UNREACHABLE}
    for args in (["ls"], ["node", "--name", "n1"], ["exec"], ["link"]):
        result = federation.cli(*args, check=False, env=env, timeout=30)
        assert_one_line_error(result, "127.0.0.1:1")
        assert result.returncode == 3, result
        assert "secret" not in result.stdout + result.stderr
