"""`Grid.run`: the run as Flower's `flwr.common.typing.Run` describes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flpg.states import RunStatus as FlpgStatus
from flpg.store.runs import Run as StoredRun

__all__ = ["Run", "RunStatus", "from_stored"]

_SUB_STATUS = {
    FlpgStatus.FINISHED: "completed",
    FlpgStatus.FAILED: "failed",
    FlpgStatus.STOPPED: "stopped",
}


@dataclass
class RunStatus:
    """Flower's run status: `status` is pending, starting, running or finished;
    a finished run's `sub_status` is completed, failed or stopped, `details` why."""

    status: str
    sub_status: str
    details: str


@dataclass
class Run:
    """The run's details with Flower's field names: `fab_id` is the app's name,
    `fab_hash` its bundle's hash, `override_config` the run config; times are ISO
    8601 strings ("" until reached)."""

    run_id: int
    fab_id: str
    fab_version: str
    fab_hash: str
    override_config: dict[str, Any] = field(default_factory=dict)
    pending_at: str = ""
    starting_at: str = ""
    running_at: str = ""
    finished_at: str = ""
    status: RunStatus = field(default_factory=lambda: RunStatus("", "", ""))
    flwr_aid: str = ""


def _iso(at: datetime | None) -> str:
    return "" if at is None else at.isoformat()


def from_stored(run: StoredRun) -> Run:
    """The stored run in Flower's terms."""
    sub = _SUB_STATUS.get(FlpgStatus(run.status), "")
    return Run(
        run_id=run.id,
        fab_id=run.app_name,
        fab_version="",
        fab_hash=run.app_hash,
        override_config=dict(run.run_config),
        pending_at=_iso(run.submitted_at),
        starting_at=_iso(run.claimed_at),
        running_at=_iso(run.started_at),
        finished_at=_iso(run.finished_at),
        status=RunStatus(
            status="finished" if sub else str(run.status),
            sub_status=sub,
            details=(run.reason or "") if sub else "",
        ),
    )
