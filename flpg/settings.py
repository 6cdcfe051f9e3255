"""Where the database and the timing intervals come from.

The database URL: `--db URL` > `FLPG_DATABASE_URL` > the embedded default cluster.
Intervals have defaults that every worker option and `FLPG_*` variable can override.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

from flpg.errors import ConfigError

DATABASE_URL_ENV = "FLPG_DATABASE_URL"


@dataclass(frozen=True)
class Intervals:
    """Timing of the bus, in seconds."""

    heartbeat: float = 5.0
    """How often a node worker and a ServerApp record that they are alive."""
    offline_after: float = 15.0
    """A node is marked offline (and a silent ServerApp's run failed) after this."""
    lease: float = 30.0
    """How long a claimed message stays with its worker without an extension."""
    poll: float = 5.0
    """Safety-net poll for workers waiting on NOTIFY."""
    sweep: float = 1.0
    """How often the link runs its sweeps."""
    payload_grace: float = 60.0
    """The link collects a payload this long after the last message needing it ended."""

    @classmethod
    def from_env(cls) -> Intervals:
        """Defaults overridden by `FLPG_HEARTBEAT`, `FLPG_OFFLINE_AFTER`, `FLPG_LEASE`, ...."""
        values: dict[str, float] = {}
        for f in fields(cls):
            raw = os.environ.get(f"FLPG_{f.name.upper()}")
            if raw is None:
                continue
            try:
                values[f.name] = float(raw)
            except ValueError:
                raise ConfigError(
                    f"FLPG_{f.name.upper()}={raw!r} is not a number of seconds"
                ) from None
            if values[f.name] <= 0:
                raise ConfigError(f"FLPG_{f.name.upper()} must be > 0, got {raw}")
        return replace(cls(), **values)


def explicit_database_url(cli_value: str | None) -> str | None:
    """The URL given with `--db` or `FLPG_DATABASE_URL`, or None for the embedded default."""
    return cli_value or os.environ.get(DATABASE_URL_ENV) or None
