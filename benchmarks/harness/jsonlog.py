"""The results of one invocation as a JSON file, rewritten after every run (so an
interrupted invocation leaves what it measured), and read back by `plot_curves.py`.

The file is one object::

    {"schema": "flpg-bench/1", "started_at": ISO, "finished_at": ISO | null,
     "argv": [...], "label": str, "machine": {...}, "versions": {...},
     "plan": {"sweep": "n" | "size" | null, "rounds": R, ...},
     "runs": [RUN, ...]}

where "versions" holds flpg_commit, postgresql, flower and the cluster's
max_connections; and each RUN holds `kind` ("matrix" or "extra"), `system`, `variant`, `key`
(system or system:variant), `label`, `run_config`, `nodes`, `size_bytes`, `size`,
`rounds`, `status` (ok | failed | timeout | skipped), `reason`, `round_seconds`,
`median_round` (null unless ok), `startup`, `total`, `rss_mib` ({group: MiB}),
`other_cpu`, `note`, `wall`, `extra`. Floats that are not finite are written as null.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.results import Outcome, format_size

SCHEMA = "flpg-bench/1"
BENCH_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = BENCH_DIR / "results"
"""Where results go by default (git-ignored: `results/` in benchmarks/.gitignore)."""


def default_path(now: datetime | None = None) -> Path:
    """`benchmarks/results/vs_flower-YYYYmmddTHHMMSSZ.json` (UTC)."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    return RESULTS_DIR / f"vs_flower-{stamp}.json"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def run_record(outcome: Outcome, *, kind: str, label: str) -> dict[str, Any]:
    """One outcome as a JSON-ready dict (see the module docstring)."""
    config = outcome.config
    record = {
        "kind": kind,
        "system": outcome.system,
        "variant": outcome.variant,
        "key": outcome.key,
        "label": label,
        "run_config": outcome.run_config,
        "nodes": config.nodes,
        "size_bytes": config.nbytes,
        "size": format_size(config.nbytes),
        "rounds": config.rounds,
        "status": outcome.status,
        "reason": outcome.reason,
        "round_seconds": list(outcome.round_seconds),
        "median_round": outcome.median_round,
        "startup": outcome.startup,
        "total": outcome.total,
        "rss_mib": dict(outcome.rss_mib),
        "other_cpu": outcome.other_cpu,
        "note": outcome.note,
        "wall": outcome.wall,
        "extra": dict(outcome.extra),
    }
    return dict(_clean(record))


def machine_facts() -> dict[str, Any]:
    """CPUs, memory, OS and kernel of this machine (for titles and the record)."""
    mem_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    os_name = platform.system()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "mem_gib": round(mem_gib, 1),
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def flpg_commit() -> str:
    """The repository's short HEAD, `+dirty` when tracked files differ; `?` without git."""
    root = BENCH_DIR.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"
    return head + ("+dirty" if dirty else "")


class JsonLog:
    """The invocation's JSON file: `add` a run, and the whole file is rewritten
    (write to a temporary name, then rename: a reader never sees half a file)."""

    def __init__(self, path: Path, argv: Sequence[str], label: str, plan: dict[str, Any]) -> None:
        self.path = path
        self.doc: dict[str, Any] = {
            "schema": SCHEMA,
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished_at": None,
            "argv": list(argv),
            "label": label,
            "machine": machine_facts(),
            "versions": {"flpg_commit": flpg_commit()},
            "plan": _clean(plan),
            "runs": [],
        }
        self.label = label
        self.began = time.monotonic()

    def set_versions(self, **versions: str | None) -> None:
        self.doc["versions"].update(versions)
        self.write()

    def add(self, outcome: Outcome, kind: str) -> None:
        self.doc["runs"].append(run_record(outcome, kind=kind, label=self.label))
        self.write()

    def finish(self) -> None:
        self.doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.doc["wall_seconds"] = round(time.monotonic() - self.began, 1)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, allow_nan=False) + "\n")
        tmp.replace(self.path)


def load(path: Path) -> dict[str, Any]:
    """A results file as written by JsonLog; ValueError when it is not one."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it as JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a vs_flower.py results file (schema {SCHEMA})")
    return doc
