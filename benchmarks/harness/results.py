"""What one configuration on one system yields, and how sizes are written."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """`4B`, `1MB`, `1.5GB` -> bytes (binary units: 1 MB = 2**20 bytes)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size like 4B, 1MB, 16MB or 1.5GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def format_size(nbytes: int) -> str:
    for unit in ("GB", "MB", "KB"):
        scale = _UNITS[unit]
        if nbytes >= scale:
            value = nbytes / scale
            return f"{value:g}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{nbytes}B"


def model_floats(nbytes: int) -> int:
    """float32 entries of a model of `nbytes` bytes (at least one)."""
    return max(nbytes // 4, 1)


@dataclass(frozen=True)
class Config:
    """One cell of the matrix."""

    nodes: int
    nbytes: int
    rounds: int

    @property
    def label(self) -> str:
        return f"N={self.nodes} {format_size(self.nbytes)}"

    @property
    def slug(self) -> str:
        return f"n{self.nodes}_{format_size(self.nbytes).replace('.', 'p').lower()}"


@dataclass
class Outcome:
    """One system on one configuration.

    `round_seconds[k]` is round k+1: the first from the round's push (payload write
    or upload starting) to its aggregate, later ones from the previous round's
    aggregate to this one's. `startup` is from the submit command's start to round
    1's push. `rss_mib` maps a group name ("server", "node", "pg") to its peak.
    """

    system: str
    config: Config
    status: str = "ok"
    """ok | failed | timeout | skipped"""
    reason: str = ""
    round_seconds: list[float] = field(default_factory=list)
    startup: float | None = None
    total: float | None = None
    rss_mib: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)
    other_cpu: float | None = None
    """Share of the machine's CPU used by processes outside the benchmark meanwhile."""
    note: str = ""
    """Anything worth a look (shown in the detail table)."""
    wall: float = 0.0
    """Harness seconds spent on this configuration, set-up and tear-down included."""
    variant: str = ""
    """Which flavour of `system` ran: an flpg `--variant` name, or the floor's
    `unlogged`; empty for the plain one."""
    run_config: str = ""
    """What the harness appended to flpg's run config (`--flpg-run-config`, a variant)."""

    @property
    def key(self) -> str:
        """`system` or `system:variant`: one line of a curve, one column of a table."""
        return f"{self.system}:{self.variant}" if self.variant else self.system

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def median_round(self) -> float | None:
        """Median over rounds 2..R (round 1 alone when R = 1)."""
        if not self.ok or not self.round_seconds:
            return None
        later = self.round_seconds[1:] or self.round_seconds
        return statistics.median(later)
