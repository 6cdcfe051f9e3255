"""The config syntax of `--run-config` / `-c` and `--node-config` (flpg.submit.config):
Flower's `k=v` items with TOML values, TOML files flattened to dotted keys, a later
value winning a key, and one-line errors naming the key, the type, the value and
where the value came from.

The expected values of the `k=v` cases are what Flower 1.23's own
`flwr.common.config.parse_config_args` returns for the same arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from flpg.errors import BadValue, ConfigError
from flpg.submit.config import (
    is_config_file,
    merge_run_config,
    parse_config_arg,
    parse_kv,
    parse_overrides,
)

DEFAULTS = {
    "num-server-rounds": 3,
    "lr": 0.1,
    "name": "plain",
    "flag": False,
    "cols": "age",
    "model": {"depth": 2, "opt": {"momentum": 0.0}},
}


# ---------------------------------------------------------------- Flower's k=v forms


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["num-server-rounds=5 lr=0.05"], {"num-server-rounds": 5, "lr": 0.05}),
        (["name='a b' n='5'"], {"name": "a b", "n": "5"}),
        (
            ["cols='age,bmi' url=\"https://example.org/d.csv?x=1&y=2\""],
            {"cols": "age,bmi", "url": "https://example.org/d.csv?x=1&y=2"},
        ),
        (["partition-id=0 num-partitions=2"], {"partition-id": 0, "num-partitions": 2}),
        (['path="/data/x"'], {"path": "/data/x"}),
        (["dataset-path='/path/to/data'"], {"dataset-path": "/path/to/data"}),
        (["model.lr=0.1 flag=true"], {"model.lr": 0.1, "flag": True}),
        (["lr=0.1", "lr=0.2 epochs=3"], {"lr": 0.2, "epochs": 3}),
    ],
    ids=[
        "numbers",
        "quoted",
        "comma-and-url",
        "partitions",
        "path",
        "single-quoted-path",
        "dotted",
        "later-wins",
    ],
)
def test_flowers_key_value_forms_parse_as_flower_parses_them(
    args: list[str], expected: dict[str, object]
) -> None:
    assert parse_overrides(args).values == expected


def test_a_quoted_number_stays_a_string_and_is_refused_for_an_integer_default() -> None:
    overrides = parse_overrides(["num-server-rounds='5'"])
    assert overrides.values == {"num-server-rounds": "5"}
    with pytest.raises(ConfigError) as err:
        merge_run_config(DEFAULTS, overrides, "app")
    assert str(err.value) == (
        "--run-config: num-server-rounds must be an integer like its default 3 in "
        '[tool.flpg.app.config] of app, got "5"'
    )


def test_node_config_accepts_flowers_readme_forms_verbatim() -> None:
    assert parse_kv("partition-id=0 num-partitions=2", "--node-config") == {
        "partition-id": 0,
        "num-partitions": 2,
    }
    assert parse_kv('path="/data/x"', "--node-config") == {"path": "/data/x"}


def test_a_key_twice_in_one_string_is_refused_but_a_later_argument_wins() -> None:
    with pytest.raises(ConfigError, match=r"--run-config: key 'lr' is given twice"):
        parse_overrides(["lr=0.1 lr=0.2"])
    overrides = parse_overrides(["lr=0.1 name=a", "lr=0.3"])
    assert overrides.values == {"lr": 0.3, "name": "a"}
    assert overrides.sources == {"lr": "--run-config argument 2", "name": "--run-config argument 1"}


# ---------------------------------------------------------------- TOML files


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_a_toml_file_is_flattened_to_dotted_keys_as_flower_does(tmp_path: Path) -> None:
    path = write(
        tmp_path / "over.toml",
        'lr = 0.5\nname = "x y"\n[model]\ndepth = 3\n[model.opt]\nmomentum = 0.9\n',
    )
    assert parse_config_arg(path, "--run-config") == {
        "lr": 0.5,
        "name": "x y",
        "model.depth": 3,
        "model.opt.momentum": 0.9,
    }
    merged = merge_run_config(DEFAULTS, parse_overrides([path]), "app")
    assert merged["model.opt.momentum"] == 0.9 and merged["model.depth"] == 3


def test_files_and_strings_mix_and_the_later_one_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "a.toml", "lr = 0.5\nflag = true\n")
    overrides = parse_overrides([path, "lr=0.7", write(tmp_path / "b.toml", "flag = false\n")])
    assert overrides.values == {"lr": 0.7, "flag": False}
    assert overrides.sources == {
        "lr": "--run-config argument 2",
        "flag": f"--run-config file {tmp_path / 'b.toml'}",
    }


def test_a_wrong_type_in_a_file_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "over.toml", "[model]\ndepth = 2.5\n")
    with pytest.raises(ConfigError) as err:
        merge_run_config(DEFAULTS, parse_overrides(["lr=0.2", path]), "app")
    assert str(err.value) == (
        f"--run-config file {path}: model.depth must be an integer like its default 2 in "
        "[tool.flpg.app.config] of app, got 2.5"
    )


def test_an_unknown_key_names_the_argument_that_set_it() -> None:
    with pytest.raises(ConfigError) as err:
        merge_run_config(DEFAULTS, parse_overrides(["lr=0.2", "depth=3"]), "app")
    assert str(err.value).startswith(
        "--run-config argument 2: key 'depth' is not in [tool.flpg.app.config] of app "
        "(known keys: cols, flag, lr, model.depth, model.opt.momentum, name, num-server-rounds)"
    )


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("lr = \n", ["is not valid TOML", "line 1"]),
        ("lr = 0.1\nlr = 0.2\n", ["is not valid TOML", "line 2"]),
        ("[model\n", ["is not valid TOML"]),
        ('name = "a\n', ["is not valid TOML"]),
    ],
    ids=["no-value", "key-twice", "open-table", "open-string"],
)
def test_a_malformed_toml_file_is_one_line_naming_the_file(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = write(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        parse_overrides([path])
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"--run-config file {path} is not valid TOML: "), line
    for needle in needles:
        assert needle in line


def test_a_missing_or_undecodable_file_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"file .*nope\.toml: cannot read it: No such file"):
        parse_config_arg(str(missing), "--run-config")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError, match=r"bin\.toml is not UTF-8 text"):
        parse_config_arg(str(binary), "--run-config")


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("since = 1979-05-27\n", ["since", "date"]),
        ("big = 99999999999999999999\n", ["big", "64-bit"]),
        ('note = "a\\u0000b"\n', ["note", "NUL"]),
        ("lr = nan\n", ["lr", "finite"]),
        ("[[layers]]\nsize = 3\n", ["layers[0]", "dict"]),
        ('"model.depth" = 1\n[model]\ndepth = 2\n', ["'model.depth'", "twice"]),
    ],
    ids=["date", "big-int", "nul", "nan", "array-of-tables", "dotted-and-nested"],
)
def test_a_file_value_the_database_cannot_store_is_refused_naming_the_file(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    path = write(tmp_path / "v.toml", text)
    with pytest.raises((ConfigError, BadValue)) as err:
        parse_config_arg(path, "--run-config")
    line = str(err.value)
    assert f"--run-config file {path}" in line
    for needle in needles:
        assert needle in line, line


def test_what_counts_as_a_file(tmp_path: Path) -> None:
    assert is_config_file("over.toml") and is_config_file(" conf/over.toml ")
    assert not is_config_file("cfg=over.toml")  # a string value that ends in .toml
    assert parse_config_arg("cfg=over.toml", "--run-config") == {"cfg": "over.toml"}
    odd = tmp_path / "a=b.toml"
    odd.write_text("lr = 1\n")
    assert is_config_file(str(odd))  # an existing file, though its name holds `=`
    assert not is_config_file("lr=0.1")
