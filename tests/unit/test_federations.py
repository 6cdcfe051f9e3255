"""`flpg run APP [FEDERATION]`: the federations of an app's pyproject (flpg.submit.federation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flpg.errors import ConfigError
from flpg.store.credentials import CredentialError
from flpg.submit.federation import FederationError, choose_federation, federation_url

FEDERATIONS = """
[tool.flwr.federations]
default = "local-simulation"

[tool.flwr.federations.local-simulation]
options.num-supernodes = 10

[tool.flwr.federations.pg]
address = "postgresql://alice@db.example:5432/flpg?sslmode=require"

[tool.flwr.federations.cred]
address = "alice.json"

[tool.flwr.federations.remote]
address = "127.0.0.1:9093"
insecure = true
"""


def app(tmp_path: Path, extra: str = FEDERATIONS) -> Path:
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n' + extra)
    return tmp_path


def credential(path: Path, kind: str) -> None:
    url = "postgresql://flpg_user_alice:pw@/flpg?host=/tmp"
    path.write_text(json.dumps({"url": url, "role": "flpg_user_alice", "kind": kind}))


def test_a_named_federation_and_the_default(tmp_path: Path) -> None:
    root = app(tmp_path)
    default = choose_federation(root, None)
    assert default is not None and (default.name, default.address) == ("local-simulation", None)
    assert federation_url(default) is None  # simulation: the default database
    pg = choose_federation(root, "pg")
    assert pg is not None
    assert federation_url(pg) == "postgresql://alice@db.example:5432/flpg?sslmode=require"


def test_no_table_and_no_name_means_no_federation(tmp_path: Path) -> None:
    assert choose_federation(app(tmp_path, ""), None) is None


def test_an_unknown_federation_names_those_that_exist(tmp_path: Path) -> None:
    with pytest.raises(FederationError) as err:
        choose_federation(app(tmp_path), "nope")
    assert str(err.value) == (
        f"FEDERATION 'nope' is not declared in [tool.flwr.federations] of "
        f"{tmp_path / 'pyproject.toml'} (federations: cred, local-simulation, pg, remote)"
    )
    assert err.value.exit_code == 2
    with pytest.raises(FederationError, match=r"\(federations: none\)"):
        choose_federation(app(tmp_path / "empty", ""), "pg")


def test_a_default_naming_no_federation_is_refused(tmp_path: Path) -> None:
    root = app(tmp_path, '[tool.flwr.federations]\ndefault = "gone"\n')
    with pytest.raises(FederationError, match=r"default 'gone' is not declared"):
        choose_federation(root, None)


def test_flpgs_table_wins_over_flowers(tmp_path: Path) -> None:
    root = app(tmp_path, FEDERATIONS + '[tool.flpg.federations.mine]\naddress = "postgres://h/d"\n')
    with pytest.raises(FederationError, match=r"\[tool.flpg.federations\].*\(federations: mine\)"):
        choose_federation(root, "pg")
    mine = choose_federation(root, "mine")
    assert mine is not None and federation_url(mine) == "postgres://h/d"


def test_a_superlink_address_is_refused_in_one_line(tmp_path: Path) -> None:
    remote = choose_federation(app(tmp_path), "remote")
    assert remote is not None
    with pytest.raises(FederationError, match=r"federation 'remote' of .*neither a PostgreSQL URL"):
        federation_url(remote)


def test_a_credential_file_address_is_resolved_from_the_app_dir(tmp_path: Path) -> None:
    root = app(tmp_path)
    cred = choose_federation(root, "cred")
    assert cred is not None
    credential(root / "alice.json", "user")
    assert federation_url(cred) == "postgresql://flpg_user_alice:pw@/flpg?host=/tmp"
    credential(root / "alice.json", "node")
    with pytest.raises(CredentialError, match=r"is a 'node' credential"):
        federation_url(cred)


def test_a_malformed_table_or_url_is_one_line(tmp_path: Path) -> None:
    root = app(tmp_path, "[tool.flwr]\nfederations = 3\n")
    with pytest.raises(FederationError, match=r"must be a table"):
        choose_federation(root, "x")
    root = app(
        tmp_path, '[tool.flwr.federations.bad]\naddress = "postgresql://h/d?nosuchoption=1"\n'
    )
    bad = choose_federation(root, "bad")
    assert bad is not None
    with pytest.raises(FederationError, match=r"is not a PostgreSQL URL"):
        federation_url(bad)
    (tmp_path / "pyproject.toml").write_text("[tool.flwr.federations\n")
    with pytest.raises(ConfigError, match="cannot read the federations"):
        choose_federation(tmp_path, None)
