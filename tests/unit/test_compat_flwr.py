"""`import flwr...` in app processes (flpg.compat.flwr), and Flower's pyproject tables.

The import hook changes `sys.modules` and `sys.meta_path`, so each check runs in a
fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flpg.bundle.appdir import parse_pyproject
from flpg.errors import AppError, ConfigError
from flpg.submit.config import flatten, merge_run_config

APPS = Path(__file__).resolve().parents[1] / "compat" / "apps"


def run_python(code: str, *, install: bool = True) -> subprocess.CompletedProcess[str]:
    prelude = "from flpg.compat.flwr import install\ninstall()\n" if install else ""
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_flwr_modules_are_aliases_of_flpg_objects() -> None:
    done = run_python(
        """
        import flwr, flpg, flpg.common
        from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
        from flwr.serverapp import Grid, ServerApp
        from flwr.serverapp.strategy import FedAvg, Result, Strategy
        from flwr.clientapp import ClientApp
        from flwr.common import NDArrays, Scalar, log
        from flwr.common.logger import log as log2
        from flwr.common.typing import UserConfig
        import flwr.serverapp.strategy
        import flwr.clientapp.mod
        from flpg.serverapp.strategy import FedAvg as flpg_fedavg
        assert (ArrayRecord, Context, Message) == (flpg.ArrayRecord, flpg.Context, flpg.Message)
        assert (MetricRecord, RecordDict) == (flpg.MetricRecord, flpg.RecordDict)
        assert (Grid, ServerApp, ClientApp) == (flpg.Grid, flpg.ServerApp, flpg.ClientApp)
        assert FedAvg is flpg_fedavg is flwr.serverapp.strategy.FedAvg
        assert log is log2 is flpg.common.log
        assert flwr.serverapp.strategy.__flpg_target__ == "flpg.serverapp.strategy"
        assert flwr.clientapp.mod.__all__ == [
            "LocalDpMod",
            "adaptiveclipping_mod",
            "arrays_size_mod",
            "fixedclipping_mod",
            "message_size_mod",
        ]
        print("ok")
        """
    )
    assert done.stdout == "ok\n", done.stderr


@pytest.mark.parametrize(
    ("statement", "line"),
    [
        (
            "from flwr.common import FitIns",
            "flwr.common.FitIns is not supported by flpg (supported: ",
        ),
        (
            "from flwr.clientapp.mod import secaggplus_mod",
            "flwr.clientapp.mod.secaggplus_mod is not supported by flpg (supported: "
            "LocalDpMod, adaptiveclipping_mod, ",
        ),
        (
            "import flwr.app; flwr.app.make_message",
            "flwr.app.make_message is not supported by flpg (supported: Array, ArrayRecord, ",
        ),
        ("import flwr.server", "flwr.server is not supported by flpg (supported: flwr, flwr.app, "),
        (
            "from flwr.server.strategy import FedAvg",
            "flwr.server is not supported by flpg (supported: flwr, flwr.app, ",
        ),
        (
            "from flwr import simulation",
            "flwr.simulation is not supported by flpg (supported: app, clientapp, common, ",
        ),
    ],
)
def test_unsupported_names_give_one_line(statement: str, line: str) -> None:
    done = run_python(
        f"""
        try:
            {statement}
        except ImportError as exc:
            print(type(exc).__name__, str(exc), sep=": ")
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    assert lines[0].split(": ", 1)[1].startswith(line), lines[0]
    assert lines[0].startswith("FlwrUnsupported"), lines[0]


def test_missing_names_of_modules_behave_as_attributes() -> None:
    done = run_python(
        """
        import flwr.app
        assert not hasattr(flwr.app, "__wrapped__")
        assert not hasattr(flwr, "__version__")
        print(sorted(flwr.serverapp.__all__))
        """
    )
    assert done.stdout.strip() == "['Grid', 'ServerApp', 'strategy']", done.stderr


def test_without_the_hook_flwr_is_not_flpg() -> None:
    done = run_python(
        """
        try:
            import flwr.app
        except ImportError:
            print("absent")
        else:
            import flpg
            print("flpg" if flwr.app.Message is flpg.Message else "real flower")
        """,
        install=False,
    )
    assert done.stdout.strip() in ("absent", "real flower"), done.stderr


def test_the_hook_wins_over_an_installed_flwr(tmp_path: Path) -> None:
    fake = tmp_path / "site" / "flwr"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("REAL = True\n")
    (fake / "app.py").write_text("Message = 'real'\n")
    done = run_python(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "site")!r})
        import flwr
        assert flwr.REAL
        from flpg.compat.flwr import install
        install()
        import flwr.app, flpg
        print(flwr.app.Message is flpg.Message, "REAL" in vars(flwr))
        """,
        install=False,
    )
    assert done.stdout.strip() == "True False", done.stderr


# ---------------------------------------------------------------- pyproject tables


def test_flower_tables_are_read_and_nested_config_is_flattened() -> None:
    path = APPS / "flwr-numpy" / "pyproject.toml"
    spec = parse_pyproject(path.read_text(), str(path))
    assert (spec.serverapp, spec.clientapp) == (
        "flwr_numpy.server_app:app",
        "flwr_numpy.client_app:app",
    )
    assert spec.config_table == "[tool.flwr.app.config]"
    merged = merge_run_config(spec.config, {"model.cols": 4}, spec.name, spec.config_table)
    assert merged == {"num-server-rounds": 2, "model.rows": 2, "model.cols": 4}
    with pytest.raises(ConfigError, match=r"not in \[tool\.flwr\.app\.config\] of flwr-numpy"):
        merge_run_config(spec.config, {"model": 1}, spec.name, spec.config_table)


def test_flpg_tables_win_over_flower_ones_table_by_table() -> None:
    text = """
        [tool.flwr.app.components]
        serverapp = "flower.server:app"
        clientapp = "flower.client:app"
        [tool.flwr.app.config]
        lr = 0.5
        [tool.flpg.app.components]
        serverapp = "mine.server:app"
        clientapp = "mine.client:app"
    """
    spec = parse_pyproject(textwrap.dedent(text), "x/pyproject.toml")
    assert (spec.serverapp, spec.config, spec.config_table) == (
        "mine.server:app",
        {"lr": 0.5},
        "[tool.flwr.app.config]",
    )
    both = textwrap.dedent(text) + "[tool.flpg.app.config]\nlr = 0.1\n"
    spec = parse_pyproject(both, "x/pyproject.toml")
    assert (spec.config, spec.config_table) == ({"lr": 0.1}, "[tool.flpg.app.config]")


def test_a_bad_flower_component_names_flowers_table() -> None:
    text = '[tool.flwr.app.components]\nserverapp = "a.b"\nclientapp = "c:d"\n'
    with pytest.raises(AppError, match=r"\[tool\.flwr\.app\.components\] serverapp must be"):
        parse_pyproject(text, "x/pyproject.toml")
    with pytest.raises(AppError, match=r"or Flower's \[tool\.flwr\.app\.components\]"):
        parse_pyproject("[tool.flwr.app]\npublisher = 'x'\n", "x/pyproject.toml")


def test_flatten_joins_nested_keys_and_refuses_one_key_spelled_twice() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": [1, 2],
    }
    with pytest.raises(ConfigError, match=r"T: key 'a\.b' is given twice"):
        flatten({"a.b": 1, "a": {"b": 2}}, where="T")


def test_common_config_round_trips_dotted_keys() -> None:
    from flpg.common.config import flatten_dict, unflatten_dict

    nested = {"model": {"rows": 2, "opt": {"lr": 0.1}}, "n": 3}
    flat = flatten_dict(nested)
    assert flat == {"model.rows": 2, "model.opt.lr": 0.1, "n": 3}
    assert unflatten_dict(flat) == nested
    assert json.dumps(flatten_dict(None)) == "{}"
