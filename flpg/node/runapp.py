"""One run's ClientApp as a ClientApp process holds it: the app (or why it did not
load), the run's reply codec and top-k bases, and one Context per node id served,
whose `state` persists across the run's rounds and lives only in this process."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from flpg.app.compressed import ReplyEncoder, reply_codec
from flpg.app.context import Context
from flpg.app.records import RecordDict
from flpg.bundle.appdir import BundleCache, load_component, parse_pyproject
from flpg.clientapp import ClientApp
from flpg.errors import FlpgError
from flpg.node.bases import ReplyBases
from flpg.store import apps as store_apps
from flpg.store import runs as store_runs
from flpg.store.db import Connection

log = logging.getLogger("flpg.clientapp")


class RunApp:
    """The run's ClientApp (or the reason it could not be loaded) and its Contexts."""

    def __init__(
        self, conn: Connection, run_id: int, cache_dir: Path, read_only: bool = False
    ) -> None:
        self.run_id = run_id
        self.app: ClientApp | None = None
        self.load_error: str | None = None
        self._contexts: dict[int, Context] = {}
        self._lock = threading.Lock()
        run = store_runs.get(conn, run_id)
        self.run_config = dict(run.run_config)
        try:
            codec = reply_codec(self.run_config)
        except ValueError as exc:  # `flpg run` refuses it; a run stored otherwise gets raw
            log.warning("run %d: %s; replies are stored uncompressed", run_id, exc)
            codec = None
        self.reply_encoder = None if codec is None else ReplyEncoder(codec)
        self.bases = ReplyBases() if codec is not None and codec.name == "topk" else None
        try:
            cache, fetch = BundleCache(cache_dir, shared=read_only), store_apps.get
            root = (
                cache.verified(run.app_hash)
                if read_only
                else cache.path(run.app_hash, lambda: fetch(conn, run.app_hash)[1])
            )
            spec = parse_pyproject((root / "pyproject.toml").read_text(), f"app {run.app_name}")
            self.app = load_component(root, spec.clientapp, ClientApp)
        except FlpgError as exc:
            self.load_error = str(exc)

    def context(self, node_id: int, node_config: dict[str, Any]) -> Context:
        """This node's Context for the run (created on first use, then kept)."""
        with self._lock:
            if node_id not in self._contexts:
                self._contexts[node_id] = Context(
                    run_id=self.run_id,
                    node_id=node_id,
                    node_config=dict(node_config),
                    state=RecordDict(),
                    run_config=dict(self.run_config),
                )
            return self._contexts[node_id]
