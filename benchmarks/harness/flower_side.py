"""Flower side: one configuration on a fresh Flower 1.42 Deployment Engine federation.

Flower is installed by the harness into `benchmarks/.flower-venv` (`flwr==1.42.*` and
numpy, with that venv's pip) on first use; it is never a dependency of flpg. Per
configuration the harness starts, from that venv, with `--insecure` on loopback ports
it picked free:

- `flower-superlink --port P --disable-runtime-dependency-installation` (in-memory
  state; in 1.42 one HTTP port serves the Fleet, Control and ServerApp runtime APIs,
  and the SuperLink starts its own `flower-superexec`, which starts one
  `flwr-serverapp` process per run);
- N `flower-supernode --superlink 127.0.0.1:P --port Pi --node-config
  "partition-id=I num-partitions=N"` (each starts a `flower-superexec`, which starts
  a `flwr-clientapp` process per message);

waits until `flwr supernode ls` shows the N nodes online, then submits
`benchmarks/apps/bench_flower` with `flwr run APP bench` (a SuperLink connection
`bench` in a private `FLWR_HOME/config.toml`). The ServerApp (FedAvg subclass)
appends wall-clock marks to a JSON-lines file: round 1 starts at the first "push"
mark (nodes sampled, payload upload starting), round k ends at its "aggregated" mark,
the run ends at "final" (which also says whether the model is right). Start-up is
from the moment the harness launched `flwr run` to round 1's push.

A run has failed when the ServerApp marks an error or a wrong model, when its
`flwr-serverapp` process ends without a "final" mark, or when a Flower process dies;
the reason then comes from `flwr ls --run-id` and the log tails. Telemetry and the
update check are switched off (FLWR_TELEMETRY_ENABLED=0, FLWR_DISABLE_UPDATE_CHECK=1).

Peak memory: "server" is the SuperLink tree (SuperLink, its SuperExec, the
ServerApp process), "node" is node 0's tree (SuperNode, its SuperExec and the
ClientApp processes it spawns).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from harness.procs import (
    HarnessError,
    Proc,
    ProcessSet,
    cmdline,
    free_ports,
    is_ours,
    wait_port,
)
from harness.results import Config, Outcome, model_floats
from harness.rss import TreeSampler, children_map, descendants, memory_low, tree_kib

BENCH_DIR = Path(__file__).resolve().parent.parent
APP_DIR = BENCH_DIR / "apps" / "bench_flower"
VENV = BENCH_DIR / ".flower-venv"
REQUIREMENT = "flwr==1.42.*"
Progress = Callable[[str], None]


class ConfigTimeout(HarnessError):
    """The configuration ran past its time budget."""


def venv_bin(name: str) -> Path:
    return VENV / "bin" / name


def installed_version() -> str | None:
    python = venv_bin("python")
    if not python.is_file():
        return None
    done = subprocess.run(
        [str(python), "-c", "import flwr, numpy; print(flwr.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"},
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_flower(progress: Progress) -> str:
    """Flower 1.42 in `benchmarks/.flower-venv`, installed on first use; its version.

    Raises HarnessError (with pip's last words) when it cannot be installed."""
    version = installed_version()
    if version is not None and version.startswith("1.42."):
        return version
    progress(f"installing {REQUIREMENT} into {VENV} (first use)")
    if not venv_bin("python").is_file():
        base = getattr(sys, "_base_executable", sys.executable)
        done = subprocess.run(
            [base, "-m", "venv", str(VENV)], capture_output=True, text=True, timeout=300
        )
        if done.returncode != 0:
            raise HarnessError(f"cannot create {VENV}: {done.stderr.strip()[-500:]}")
    done = subprocess.run(
        [str(venv_bin("python")), "-m", "pip", "install", "-q", REQUIREMENT, "numpy"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        raise HarnessError(f"pip install {REQUIREMENT} failed: {done.stderr.strip()[-800:]}")
    version = installed_version()
    if version is None or not version.startswith("1.42."):
        raise HarnessError(f"{VENV} has flwr {version}, not 1.42")
    return version


def read_marks(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    marks: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.endswith("}"):
            try:
                marks.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return marks


class FlowerFederation:
    """The Flower processes of one configuration."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.workdir = workdir
        home = workdir / "flwr-home"
        home.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.node_ports: list[int] = []
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLPG_", "FLWR_", "PYTHON", "VIRTUAL_ENV"))
        }
        env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["FLWR_HOME"] = str(home)
        env["FLWR_TELEMETRY_ENABLED"] = "0"
        env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
        self.procs = ProcessSet(name, workdir / "logs", env, workdir)
        self.link: Proc | None = None
        self.nodes: list[Proc] = []

    def start(self, nodes: int, deadline: float) -> None:
        ports = free_ports(1 + nodes)
        self.port, self.node_ports = ports[0], ports[1:]
        (self.workdir / "flwr-home" / "config.toml").write_text(
            '[superlink]\ndefault = "bench"\n\n'
            f'[superlink.bench]\naddress = "127.0.0.1:{self.port}"\ninsecure = true\n'
        )
        self.link = self.procs.start(
            "superlink",
            [
                str(venv_bin("flower-superlink")),
                "--insecure",
                "--port",
                str(self.port),
                "--disable-runtime-dependency-installation",
            ],
        )
        wait_port(self.port, max(deadline - time.monotonic(), 1.0), self.link)
        for i, port in enumerate(self.node_ports):
            self.nodes.append(
                self.procs.start(
                    f"supernode{i}",
                    [
                        str(venv_bin("flower-supernode")),
                        "--insecure",
                        "--superlink",
                        f"127.0.0.1:{self.port}",
                        "--port",
                        str(port),
                        "--node-config",
                        f"partition-id={i} num-partitions={nodes}",
                    ],
                )
            )

    def flwr(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.procs.run([str(venv_bin("flwr")), *args], timeout=timeout)

    def wait_online(self, count: int, deadline: float) -> None:
        online = 0
        while True:
            self.procs.check_alive()
            # 32 SuperNodes starting on 2 busy cores can keep `flwr` from answering for
            # over a minute: wait as long as the configuration's deadline allows.
            wait = max(60.0, deadline - time.monotonic())
            done = self.flwr("supernode", "ls", "bench", "--format", "json", timeout=wait)
            if done.returncode == 0:
                try:
                    nodes = json.loads(done.stdout).get("nodes", [])
                    online = sum(1 for n in nodes if n.get("status") == "online")
                except json.JSONDecodeError:
                    online = 0
                if online >= count:
                    return
            if time.monotonic() > deadline:
                raise ConfigTimeout(
                    f"only {online} of {count} SuperNodes online in time\n"
                    + self.procs.log_tails(self.procs.procs[:2])
                )
            time.sleep(0.5)

    def serverapp_pids(self) -> list[int]:
        if self.link is None:
            return []
        pids = descendants([self.link.pid], children_map())
        return [p for p in pids if "flwr-serverapp" in cmdline(p) and _alive(p)]

    def run_status(self, run_id: str) -> str:
        done = self.flwr("ls", "bench", "--run-id", run_id, "--format", "json", timeout=180)
        try:
            runs = json.loads(done.stdout).get("runs", [])
        except json.JSONDecodeError:
            return done.stdout.strip()[-300:] or done.stderr.strip()[-300:]
        if not runs:
            return "no such run"
        run = runs[0]
        return f"{run.get('status')} ({run.get('status-details')})"

    def stop(self) -> list[str]:
        return self.procs.stop(order=[["supernode"]], grace=10.0)


def _alive(pid: int) -> bool:
    try:
        stat = Path("/proc", str(pid), "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class FlowerSide:
    """Runs Flower configurations; `version` is None when Flower could not be installed."""

    def __init__(self, workdir: Path, progress: Progress) -> None:
        self.workdir = workdir
        self.progress = progress
        self.counter = 0
        self.version: str | None = None
        self.install_error = ""
        try:
            self.version = ensure_flower(progress)
        except (HarnessError, OSError, subprocess.SubprocessError) as exc:
            self.install_error = str(exc)

    def run(self, config: Config, timeout: float) -> Outcome:
        outcome = Outcome("flower", config)
        if self.version is None:
            outcome.status, outcome.reason = "failed", f"Flower not installed: {self.install_error}"
            return outcome
        began = time.monotonic()
        deadline = began + timeout
        self.counter += 1
        workdir = self.workdir / f"flower_{self.counter}_{config.slug}"
        fed = FlowerFederation(f"flower-{config.slug}", workdir)
        sampler: TreeSampler | None = None
        try:
            fed.start(config.nodes, deadline)
            sampler = TreeSampler()
            link_pid = fed.link.pid if fed.link else -1
            node_pid = fed.nodes[0].pid
            sampler.add("server", lambda: [link_pid])
            sampler.add("node", lambda: [node_pid])
            sampler.start(is_ours)
            fed.wait_online(config.nodes, deadline)
            timing = workdir / "timing.jsonl"
            run_config = (
                f"num-server-rounds={config.rounds} model-floats={model_floats(config.nbytes)} "
                f"min-nodes={config.nodes} round-timeout={max(timeout, 60.0)} "
                f'timing-file="{timing}"'
            )
            t_submit = time.time()
            done = fed.flwr(
                "run", str(APP_DIR), "bench", "--run-config", run_config, "--format", "json"
            )
            if done.returncode != 0:
                raise HarnessError(
                    f"flwr run exited {done.returncode}: {done.stderr.strip()[-500:]}"
                )
            t_cli = time.time()
            run_id = str(json.loads(done.stdout)["run-id"])
            marks = self._wait(fed, run_id, timing, deadline)
            pushes = [m for m in marks if m["event"] == "push"]
            ends = [m["t"] for m in marks if m["event"] == "aggregated"]
            final = next(m for m in marks if m["event"] == "final")
            if len(ends) != config.rounds or not pushes:
                raise HarnessError(f"{len(ends)} aggregated round(s) of {config.rounds}")
            points = [float(pushes[0]["t"]), *map(float, ends)]
            outcome.round_seconds = [b - a for a, b in pairwise(points)]
            outcome.startup = float(pushes[0]["t"]) - t_submit
            outcome.total = float(final["t"]) - t_submit
            t_main = next((float(m["t"]) for m in marks if m["event"] == "main"), t_cli)
            outcome.note = (
                f"submit {t_cli - t_submit:.2f} + launch {t_main - t_cli:.2f} + ServerApp "
                f"{float(pushes[0]['t']) - t_main:.2f}"
            )
        except ConfigTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc)
        except HarnessError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            if sampler is not None:
                outcome.rss_mib = sampler.stop()
                outcome.other_cpu = sampler.other_cpu
            killed = fed.stop()
            if killed:
                self.progress(f"flower {config.label}: had to kill: " + "; ".join(killed))
            outcome.wall = time.monotonic() - began
        return outcome

    def _wait(
        self, fed: FlowerFederation, run_id: str, timing: Path, deadline: float
    ) -> list[dict[str, Any]]:
        """The ServerApp's marks once it marked "final"; HarnessError on a failure."""
        seen_serverapp = False
        gone_since: float | None = None
        submitted = time.monotonic()
        while True:
            marks = read_marks(timing)
            events = {m["event"]: m for m in marks}
            if "final" in events:
                if not events["final"].get("ok"):
                    raise HarnessError(f"wrong final model: {events['final']}")
                return marks
            if "error" in events:
                raise HarnessError(
                    f"ServerApp raised {events['error'].get('error')}; "
                    f"run {self._status(fed, run_id)}"
                )
            fed.procs.check_alive()
            low = memory_low()
            if low is not None:
                raise HarnessError(f"run {run_id}: {low}")
            running = fed.serverapp_pids()
            if running:
                seen_serverapp, gone_since = True, None
            elif seen_serverapp or time.monotonic() - submitted > 120:
                # No ServerApp process (any more): give its last write a moment.
                gone_since = gone_since or time.monotonic()
                if time.monotonic() - gone_since > 3.0:
                    rounds = sum(1 for m in marks if m["event"] == "aggregated")
                    raise HarnessError(
                        f"ServerApp ended after {rounds} round(s) without a result; "
                        f"run {self._status(fed, run_id)}"
                    )
            if time.monotonic() > deadline:
                rounds = sum(1 for m in marks if m["event"] == "aggregated")
                raise ConfigTimeout(
                    f"run {run_id} not done in time ({rounds} round(s) aggregated); "
                    f"run {self._status(fed, run_id)}"
                )
            time.sleep(0.25)

    def _status(self, fed: FlowerFederation, run_id: str) -> str:
        try:
            return self._one_line(fed.run_status(run_id))
        except HarnessError as exc:
            return f"status unknown ({exc})"

    @staticmethod
    def _one_line(text: str) -> str:
        return " ".join(text.split())[:300]

    def idle_node(self, timeout: float) -> Outcome:
        """RSS of one idle SuperNode tree (SuperNode + its SuperExec), connected."""
        config = Config(1, 4, 1)
        outcome = Outcome("flower", config)
        if self.version is None:
            outcome.status, outcome.reason = "failed", f"Flower not installed: {self.install_error}"
            return outcome
        began = time.monotonic()
        self.counter += 1
        fed = FlowerFederation("flower-idle", self.workdir / f"flower_{self.counter}_idle")
        try:
            fed.start(1, began + timeout)
            fed.wait_online(1, began + timeout)
            time.sleep(3.0)
            node = fed.nodes[0].pid
            outcome.extra["fresh_mib"] = tree_kib([node]) / 1024
            outcome.extra["procs"] = float(len(descendants([node], children_map())))
        except ConfigTimeout as exc:
            outcome.status, outcome.reason = "timeout", str(exc)
        except HarnessError as exc:
            outcome.status, outcome.reason = "failed", str(exc)
        finally:
            fed.stop()
            outcome.wall = time.monotonic() - began
        return outcome
