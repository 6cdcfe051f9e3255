"""The ClientApps a node worker runs, loaded once per run and kept between rounds.

Each (run, node) pair has its own Context, whose `state` persists across that
run's rounds on that node and is never shared with another run.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flpg.appbundle import BundleCache, load_component, parse_pyproject
from flpg.clientapp import ClientApp
from flpg.context import Context
from flpg.db import Connection
from flpg.records import RecordDict
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs


class AppHost:
    """Loads each run's ClientApp from its bundle (verified, cached on disk)."""

    def __init__(self, cache_dir: Path, node_configs: dict[int, dict[str, Any]]) -> None:
        self._cache = BundleCache(cache_dir)
        self._node_configs = node_configs
        self._lock = threading.Lock()
        self._apps: dict[int, tuple[ClientApp, dict[str, Any]]] = {}
        self._contexts: dict[tuple[int, int], Context] = {}

    def get(self, conn: Connection, run_id: int, node_id: int) -> tuple[ClientApp, Context]:
        """The run's ClientApp and this node's Context for it (raises AppError)."""
        with self._lock:
            if run_id not in self._apps:
                run = store_runs.get(conn, run_id)
                root = self._cache.path(run.app_hash, lambda: store_apps.get(conn, run.app_hash)[1])
                spec = parse_pyproject((root / "pyproject.toml").read_text(), f"app {run.app_name}")
                app = load_component(root, spec.clientapp, ClientApp)
                self._apps[run_id] = (app, dict(run.run_config))
            app, run_config = self._apps[run_id]
            key = (run_id, node_id)
            if key not in self._contexts:
                self._contexts[key] = Context(
                    run_id=run_id,
                    node_id=node_id,
                    node_config=dict(self._node_configs.get(node_id, {})),
                    state=RecordDict(),
                    run_config=dict(run_config),
                )
            return app, self._contexts[key]

    def forget(self, run_id: int) -> None:
        """Drop a run's ClientApp and contexts (the next message loads them afresh)."""
        with self._lock:
            self._apps.pop(run_id, None)
            for key in [k for k in self._contexts if k[0] == run_id]:
                del self._contexts[key]
