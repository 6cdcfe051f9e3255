"""App processes run as another OS user: `flpg node --app-user USER` and `flpg exec
--app-user USER` (docs/security.md, "Running apps as another OS user").

These tests must run as root (as CI runs them): only root may switch a process's user.
As another user they fail, naming the need; they are not skipped.

USER is an account the module creates (`useradd`) and removes: `nobody` may be the
account the embedded cluster runs as, whose processes are the cluster's superuser.
The app processes reach the database over TCP with TLS, as in test_tls_federation: the
module serves a cluster of its own, and the exec and the nodes run as roles admin
enrolled. Their credential files (0600), a root-only secret (0600) and the workers'
app cache sit in a directory USER may enter: only their own modes keep USER out. When
the test's interpreter lives where USER cannot run it (a Python under /root), the
workers are given one it can (`FLPG_APP_PYTHON`): a venv of this machine's system
Python of the same version that sees the test's packages.

apps/appuser's ServerApp and ClientApps report their uid, groups, umask, home, parent
pid, and whether they could read a root-only file and their worker's credential file,
write into the app cache (by its real path, by the path they were given, and into
their own extracted bundle), signal their worker, and write into their home; then the
run is FedAvg with apps/deterministic's exactly known result.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flpg.bundle.appuser import NEEDS_ROOT
from flpg.local.cluster import Cluster
from tests._binaries import require_bindir
from tests.db._served import flpg_cli, free_port
from tests.e2e.conftest import make_env
from tests.e2e.harness import APPS, Federation, Proc
from tests.e2e.test_federated_run import expected_final_arrays, final_line

pytestmark = pytest.mark.e2e

NEEDS_ROOT_TO_TEST = (
    "tests/e2e/test_app_user.py must run as root (CI runs the tests as root): "
    "`--app-user` switches the app processes' OS user, which only root may do"
)
CERT_HOST = "localhost"


def require_root() -> None:
    """Fail the calling test (not skip it) unless the tests run as root."""
    if os.geteuid() != 0:
        pytest.fail(NEEDS_ROOT_TO_TEST, pytrace=False)


@dataclass(frozen=True)
class AppAccount:
    """The OS user the app processes run as, and an interpreter it can run."""

    name: str
    uid: int
    gid: int
    python: str
    """What FLPG_APP_PYTHON is set to (the test's interpreter if USER can run it)."""


def _imports_flpg(python: str, uid: int, gid: int) -> bool:
    """Whether user `uid` can run `python` and import flpg's app processes with it."""
    try:
        done = subprocess.run(
            [python, "-c", "import flpg.exec.runner, flpg.node.appprocess"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            capture_output=True,
            timeout=120,
            check=False,
        )
    except PermissionError:  # it cannot even run it
        return False
    return done.returncode == 0


def _app_python(root: Path, uid: int, gid: int) -> str:
    """The test's interpreter if USER can import flpg with it; else a venv of a system
    Python of the same version whose site sees the test's packages (a `.pth` file)."""
    if _imports_flpg(sys.executable, uid, gid):
        return sys.executable
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for base in (f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        if not os.access(base, os.X_OK):
            continue
        venv = root / "app-python"
        subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        site = Path(
            subprocess.run(
                [
                    str(venv / "bin" / "python"),
                    "-c",
                    "import site; print(site.getsitepackages()[0])",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        ours = sysconfig.get_paths()["purelib"]
        (site / "flpg-test-packages.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
        python = str(venv / "bin" / "python")
        if _imports_flpg(python, uid, gid):
            return python
    pytest.fail(
        f"USER cannot run {sys.executable} and import flpg, and no /usr/bin/{version} or "
        f"/usr/local/bin/{version} that could was found; install one (it is given the "
        "test's packages) or run the tests with an interpreter other users may run",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def account() -> Iterator[AppAccount]:
    """A fresh system account (no home, no login shell), removed at the end."""
    require_root()
    name = f"flpgapp{os.getpid() % 100000}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    scratch = Path(tempfile.mkdtemp(prefix="flpg-app-user-", dir="/tmp"))
    try:
        entry = pwd.getpwnam(name)
        os.chmod(scratch, 0o755)
        python = _app_python(scratch, entry.pw_uid, entry.pw_gid)
        yield AppAccount(name, entry.pw_uid, entry.pw_gid, python)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True, timeout=60)


@dataclass
class Served:
    """Admin's harness on a served cluster, and the participants' environment."""

    fed: Federation
    port: int
    env: dict[str, str]
    """The workers' environment: no FLPG_DATABASE_URL, FLPG_APP_PYTHON, a TMPDIR of
    their own (where they make the app processes' homes)."""
    tmpdir: Path
    shared: Path
    """A directory (0755) of root's files that USER may reach: the credential files
    (0600), a root-only secret (0600) and the workers' app cache."""

    def enrol(self, name: str, *args: str) -> Path:
        path = self.shared / "credentials" / f"{name}.json"
        self.fed.cli(*args, "--host", f"{CERT_HOST}:{self.port}", "--out", str(path))
        return path

    def start(self, name: str, *args: str) -> Proc:
        admin_env = self.fed.env
        self.fed.env = {**self.env, "FLPG_E2E_HARNESS_TAG": admin_env["FLPG_E2E_HARNESS_TAG"]}
        try:
            return self.fed.start(name, *args)
        finally:
            self.fed.env = admin_env


@pytest.fixture
def served(request: pytest.FixtureRequest, account: AppAccount, tmp_path: Path) -> Iterator[Served]:
    """A cluster of its own served on 127.0.0.1 with TLS; teardown stops every process
    (cleanly, when the test passed) and destroys the cluster."""
    require_bindir()
    home = Path(tempfile.mkdtemp(prefix="flpg-app-user-db-", dir="/tmp"))
    tmpdir = Path(tempfile.mkdtemp(prefix="flpg-app-user-tmp-", dir="/tmp"))
    os.chmod(home, 0o711)  # as root, the server account must pass through
    cluster = Cluster(home / "postgres")
    fed: Federation | None = None
    try:
        port = free_port()
        result = flpg_cli(home, "db", "serve", "--listen", f"127.0.0.1:{port}")
        assert result.returncode == 0, result.stderr
        workdir = tmp_path / "work"
        workdir.mkdir()
        fed = Federation({**make_env(cluster.url(), workdir), "FLPG_HOME": str(home)}, workdir)
        shared = home / "shared"
        (shared / "credentials").mkdir(parents=True)
        subprocess.run(["chmod", "-R", "0755", str(shared)], check=True)
        os.chmod(tmpdir, 0o711)
        env = {k: v for k, v in fed.env.items() if k != "FLPG_DATABASE_URL"}
        env.update(
            FLPG_HOME=str(workdir / "participant-home"),
            FLPG_APP_PYTHON=account.python,
            FLPG_CACHE_DIR=str(shared / "cache"),
            # The ServerApp's artifact directory: the runs dir must be reachable by
            # the app user (pytest's own temporary directory is 0700).
            FLPG_RUNS_DIR=str(home / "runs"),
            TMPDIR=str(tmpdir),
        )
        yield Served(fed, port, env, tmpdir, shared)
    finally:
        try:
            if fed is not None:
                report = fed.stop_all()
                assert not report.left, f"processes left running: {report.left}\n{fed.logs()}"
                call = getattr(request.node, "e2e_rep_call", None)
                if call is not None and call.passed:
                    assert report.clean, f"unclean shutdown: {report}\n{fed.logs()}"
        finally:
            cluster.destroy()
            shutil.rmtree(home, ignore_errors=True)
            shutil.rmtree(tmpdir, ignore_errors=True)


def _probes(log: str) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """The ServerApp's probe and each node id's ClientApp probe, from the run's log."""
    server = [json.loads(x[10:]) for x in log.splitlines() if x.startswith("SERVERAPP ")]
    clients = {}
    for line in log.splitlines():
        if line.startswith("CLIENTAPP "):
            _, node_id, found = line.split(" ", 2)
            clients[int(node_id)] = json.loads(found)
    assert len(server) == 1, log
    return server[0], clients


def _assert_confined(
    found: dict[str, Any],
    account: AppAccount,
    worker: Proc,
    tmpdir: Path,
    cwd: Path | None = None,
) -> None:
    """The probe ran as the app account, in its own home, and in `cwd` (default: that
    home; a ServerApp runs in its run's artifact directory, the app account's, 0700)."""
    assert (found["uid"], found["euid"], found["gid"]) == (account.uid, account.uid, account.gid)
    assert found["groups"] in ([], [account.gid]), found
    assert found["umask"] == 0o077
    assert found["ppid"] == worker.pid  # the probe signalled its own worker
    assert Path(found["home"]).parent.parent == tmpdir, found
    assert (found["home_mode"], found["home_uid"]) == (0o700, account.uid)
    assert found["cwd"] == (found["home"] if cwd is None else str(cwd)), found
    if cwd is not None:
        st = cwd.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (account.uid, 0o700)
    refused = {
        "read_secret": "EACCES",
        "read_credential": "EACCES",
        "write_cache": "EACCES",
        "write_given_cache": "EACCES",
        "write_bundle": "EACCES",
        "signal_worker": "EPERM",
        "write_home": "ok",
    }
    assert {k: found[k] for k in refused} == refused, found


def test_a_fedavg_run_whose_apps_run_as_another_user(account: AppAccount, served: Served) -> None:
    fed = served.fed
    secret = served.shared / "secret"
    secret.write_text("root's alone")
    secret.chmod(0o600)
    exec_cred = served.enrol("exec", "exec", "enroll", "main")
    nodes = [
        served.enrol(
            f"node{i}",
            "node",
            "enroll",
            f"node{i}",
            "--node-config",
            f"partition-id={i} num-partitions=2",
        )
        for i in range(2)
    ]
    fed.link()  # as admin, on the cluster's socket: it starts no app
    user = ("--app-user", account.name)
    workers = {"exec": served.start("exec", "exec", "--credentials", str(exec_cred), *user)}
    for i, cred in enumerate(nodes):
        workers[f"node{i}"] = served.start(
            f"node{i}", "node", "--credentials", str(cred), "--name", f"node{i}", *user
        )
    fed.wait_nodes_online(2, timeout=60)

    cache = Path(served.env["FLPG_CACHE_DIR"])
    config = f'secret="{secret}" credential="{nodes[0]}" cache-dir="{cache}"'
    run_id = fed.submit(APPS / "appuser", "--run-config", config)
    assert fed.wait_run(run_id, timeout=120)["status"] == "finished", fed.logs()
    log = fed.log_of(run_id)
    final = final_line(log)
    for name, value in expected_final_arrays().items():
        assert np.array_equal(final[name], value), (name, final[name], value)

    server, clients = _probes(log)
    artifacts = Path(served.env["FLPG_RUNS_DIR"]) / str(run_id)
    _assert_confined(server, account, workers["exec"], served.tmpdir, cwd=artifacts)
    names = dict(fed.sql("SELECT id, name FROM nodes"))
    assert sorted(names[i] for i in clients) == ["node0", "node1"], clients
    for node_id, found in clients.items():
        _assert_confined(found, account, workers[names[node_id]], served.tmpdir)
    # The cache is root's, readable by all, writable by root alone.
    for path in [cache, *cache.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, path

    # Once the workers stopped, the app processes' homes are gone.
    report = fed.stop(workers.values())
    assert report.exit_codes == dict.fromkeys(workers, 0), fed.logs()
    assert list(served.tmpdir.iterdir()) == []


@pytest.mark.parametrize("kind", ["node", "exec"])
def test_a_bad_app_user_is_refused_at_start_in_one_line(
    kind: str, account: AppAccount, federation: Federation
) -> None:
    worker = ["node", "--name", "n"] if kind == "node" else ["exec"]

    def refused(*args: str, as_user: bool = False) -> tuple[int, str]:
        argv = [*worker, *args]
        if not as_user:
            result = federation.cli(*argv, check=False, timeout=60)
            code, err = result.returncode, result.stderr
        else:  # the worker itself as a user other than root
            done = subprocess.run(
                [account.python, "-m", "flpg.cli", *argv],
                env={**federation.env, "HOME": "/"},
                cwd="/",
                user=account.uid,
                group=account.gid,
                extra_groups=[],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            code, err = done.returncode, done.stderr
        assert len(err.strip().splitlines()) == 1, err
        return code, err.strip()

    assert refused("--app-user", "no-such-user-here") == (
        2,
        "flpg: error: --app-user: there is no OS user 'no-such-user-here' on this machine",
    )
    code, line = refused("--app-user", "root")
    assert code == 2 and line.startswith("flpg: error: --app-user 'root' is root (uid 0)"), line
    assert refused("--app-user", account.name, as_user=True) == (2, f"flpg: error: {NEEDS_ROOT}")
    assert not federation.nodes()  # no worker started
