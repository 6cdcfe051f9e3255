"""The embedded default database: a private PostgreSQL cluster under the flpg home.

Used when neither `--db` nor `FLPG_DATABASE_URL` is given. Initialised on first
use, started on demand, reused afterwards. The home is `$FLPG_HOME`, else
`$XDG_DATA_HOME/flpg` (~/.local/share/flpg); for root, `/var/lib/flpg`, because
the server runs as an unprivileged account that cannot enter /root.
"""

from __future__ import annotations

import os
from pathlib import Path

from flpg.local.cluster import Cluster

HOME_ENV = "FLPG_HOME"


def home() -> Path:
    """The flpg home directory (not created here)."""
    explicit = os.environ.get(HOME_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/flpg")
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flpg"


def cluster() -> Cluster:
    """The embedded cluster of the current flpg home."""
    return Cluster(home() / "postgres")


def ensure_url() -> str:
    """Start the embedded cluster if needed and return its URL (EmbeddedDatabaseError)."""
    return cluster().ensure_running()
