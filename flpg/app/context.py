"""The `Context` handed to ServerApp and ClientApp functions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flpg.app.records import RecordDict

__all__ = ["Context"]


@dataclass
class Context:
    """Per-run, per-node state.

    `node_id` is None for the ServerApp. `state` is a `RecordDict` the app may
    use to keep data between rounds; `node_config` and `run_config` are plain
    dicts of settings.
    """

    run_id: int
    node_id: int | None
    node_config: dict[str, Any]
    state: RecordDict
    run_config: dict[str, Any]
