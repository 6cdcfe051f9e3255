"""Submitting a run: bundle the app, resolve its config and node selection, store it.

Everything is checked before anything is written; the run and its selection are
created in one transaction, so a rejected submission leaves nothing behind.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flpg.bundle.appdir import AppSpec, bundle, check_components, read_app, shown
from flpg.bundle.archive import extract
from flpg.store import nodes as store_nodes
from flpg.store import runs as store_runs
from flpg.store.db import Connection
from flpg.submit.config import merge_run_config, parse_overrides
from flpg.submit.selection import select_nodes


@dataclass(frozen=True)
class Submitted:
    run_id: int
    app_name: str
    app_hash: str
    node_ids: list[int]


def submit(
    conn: Connection,
    app_dir: Path,
    *,
    run_config: str | Sequence[str] | None = None,
    priority: int = 0,
    max_restarts: int = 0,
    nodes: str | None = None,
    node_selector: str | None = None,
) -> Submitted:
    """Validate and store a run of the app in `app_dir`; returns its id.

    `run_config`: the `--run-config` values, each `k=v` items or a TOML file, a later
    one winning a key (see `flpg.submit.config.parse_overrides`).

    Raises AppError (directory, pyproject, components), ConfigError or BadValue
    (run config: syntax, an unreadable or malformed file, unknown key, a type other
    than its default's, a value jsonb cannot store), NodeNotFound (unknown node, or a
    selection that matches no node).
    """
    spec = read_app(app_dir)
    app_hash, data = bundle(app_dir)  # refuses bad files before any app code runs
    overrides = parse_overrides(run_config, "--run-config")
    config = merge_run_config(spec.config, overrides, spec.name, spec.config_table)
    _check_bundle(app_dir, spec, data)
    node_ids = select_nodes(store_nodes.list_all(conn), nodes, node_selector)
    run_id = store_runs.create(
        conn,
        app_hash=app_hash,
        app_name=spec.name,
        bundle=data,
        run_config=config,
        node_ids=node_ids,
        priority=priority,
        max_restarts=max_restarts,
    )
    return Submitted(run_id, spec.name, app_hash, node_ids)


def _check_bundle(app_dir: Path, spec: AppSpec, data: bytes) -> None:
    """Import the components from the bundle as a node will see it (not from the
    directory), in a child process with a time limit; AppError otherwise."""
    with tempfile.TemporaryDirectory(prefix="flpg-bundle-") as tmp:
        extract(data, Path(tmp), f"the bundle of {shown(app_dir)}")
        check_components(Path(tmp), spec, where=str(app_dir))
