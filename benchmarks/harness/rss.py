"""Peak resident memory of process trees, sampled from /proc.

A `TreeSampler` thread wakes every `interval` seconds, finds every descendant of
each group's root processes (by parent pid, so children in sessions of their own,
such as flpg's ClientApp processes or Flower's SuperExec and per-message ClientApp
processes, count), and sums their memory:

- mode "rss": the sum of `VmRSS`. The group's peak is the larger of the highest sum
  seen and the highest `VmHWM` (the kernel's own exact per-process peak) of any one
  member, so a single process's spike between two samples is not missed. Shared
  pages are counted once per process (as `ps` and `top` do).
- mode "pss": the sum of `Pss` from `smaps_rollup` (shared pages split between the
  processes mapping them): right for PostgreSQL, whose backends all map the same
  shared buffers.

Without /proc (not Linux), psutil is used when installed, for "rss" only.

The sampler also tells how much CPU processes outside the benchmark used while it
ran (`other_cpu`, a share of all CPUs): the user + system time, between `start()`
and `stop()`, of every process alive at `stop()` that is in no group's tree and does
not carry the invocation's tag. It is a lower bound (a foreign process that starts
and ends in between is missed; counting reaped children's time instead would credit
a long-lived child's whole life to the moment it is reaped) but tells a quiet machine
from one where, say, a test suite competed with the benchmark.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
Roots = Callable[[], list[int]]


def children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir(PROC):
        if not entry.isdigit():
            continue
        try:
            stat = (PROC / entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(roots: list[int], children: dict[int, list[int]]) -> list[int]:
    """`roots` and every process below them."""
    seen: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.append(pid)
        stack.extend(children.get(pid, []))
    return seen


def _status_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of `pid` in KiB; zeros if it is gone or a zombie."""
    rss = hwm = 0
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return 0, 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def _pss_kib(pid: int) -> int:
    try:
        text = (PROC / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


MEMORY_FLOOR_MIB = 1536
"""A run is stopped as failed when the machine's available memory drops below this,
before the kernel's OOM killer picks a victim (which could be PostgreSQL or us)."""


def available_mib() -> float | None:
    """`MemAvailable` of the machine in MiB (None without /proc/meminfo)."""
    try:
        for line in (PROC / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_low() -> str | None:
    """Why the run must stop for lack of memory, or None."""
    free = available_mib()
    if free is not None and free < MEMORY_FLOOR_MIB:
        return (
            f"stopped by the harness: the machine had only {free:.0f} MiB available "
            f"(guard at {MEMORY_FLOOR_MIB} MiB)"
        )
    return None


def tree_kib(roots: list[int], mode: str = "rss") -> int:
    """The memory of `roots` and their descendants now, in KiB."""
    if not PROC.is_dir():
        return _psutil_tree_kib(roots)
    pids = descendants(roots, children_map())
    if mode == "pss":
        return sum(_pss_kib(p) for p in pids)
    return sum(_status_kib(p)[0] for p in pids)


def _psutil_tree_kib(roots: list[int]) -> int:
    try:
        import psutil  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return 0
    total = 0
    for root in roots:
        try:
            proc = psutil.Process(root)
            members = [proc, *proc.children(recursive=True)]
        except psutil.Error:
            continue
        for member in members:
            try:
                total += member.memory_info().rss // 1024
            except psutil.Error:
                continue
    return total


@dataclass
class Group:
    """A named set of process trees whose summed memory is tracked."""

    name: str
    roots: Roots
    mode: str = "rss"
    peak_sum_kib: int = 0
    peak_single_kib: int = 0
    samples: int = 0
    members: set[int] = field(default_factory=set)

    @property
    def peak_mib(self) -> float:
        return max(self.peak_sum_kib, self.peak_single_kib) / 1024


class TreeSampler:
    """Samples the groups' memory in a background thread until `stop()`."""

    PSS_EVERY = 2.0
    """Seconds between two PSS samples. PSS walks every page table entry of every
    process sampled (smaps_rollup): every 0.2 s over PostgreSQL's backends it took a
    fifth of this 2-CPU machine during a round of 128 MB payloads (perf), time taken
    from the system measured. RSS (/proc/PID/status) stays at `interval`."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._pss_at = -float("inf")
        self.groups: dict[str, Group] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ours: Callable[[int], bool] = lambda _pid: False
        self._before: dict[int, tuple[int, float]] = {}
        self._began = 0.0
        self.other_cpu: float | None = None
        """Share of the machine's CPU (0..1) that processes outside the benchmark
        used while it sampled: another test suite on the machine, say, which skews
        the times."""

    def add(self, name: str, roots: Roots, mode: str = "rss") -> None:
        self.groups[name] = Group(name, roots, mode)

    def start(self, ours: Callable[[int], bool] | None = None) -> TreeSampler:
        """Start sampling; `ours(pid)` says which processes belong to the benchmark
        (beside the groups' trees) for the CPU-use-by-others figure."""
        if ours is not None:
            self.ours = ours
        self._before = self._foreign()
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling (after one last sample); each group's peak in MiB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        window = time.monotonic() - self._began
        if PROC.is_dir() and window > 0.5:
            after = self._foreign()
            used = 0.0
            for pid, (start, cpu) in after.items():
                old = self._before.get(pid)
                used += cpu - old[1] if old is not None and old[0] == start else cpu
            self.other_cpu = min(max(used, 0.0) / (window * (os.cpu_count() or 1)), 1.0)
        return {name: g.peak_mib for name, g in self.groups.items()}

    def peaks(self) -> dict[str, float]:
        return {name: g.peak_mib for name, g in self.groups.items()}

    def _foreign(self) -> dict[int, tuple[int, float]]:
        """pid -> (start time, CPU seconds) of every process that is neither in a
        group's tree nor `ours`."""
        children = children_map()
        mine = {os.getpid()}
        for group in self.groups.values():
            mine.update(descendants(group.roots(), children))
        tick = os.sysconf("SC_CLK_TCK")
        found: dict[int, tuple[int, float]] = {}
        for entry in os.listdir(PROC):
            if not entry.isdigit() or int(entry) in mine or self.ours(int(entry)):
                continue
            try:
                fields = (PROC / entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            # utime and stime are fields 14 and 15 of stat; field 3 is index 0 here.
            cpu = (int(fields[11]) + int(fields[12])) / tick
            found[int(entry)] = (int(fields[19]), cpu)
        return found

    def _loop(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            self.sample(final=stopping)
            if stopping:
                return

    def sample(self, final: bool = True) -> None:
        """One sample of every group; PSS groups only every PSS_EVERY s (and when
        `final`)."""
        if not PROC.is_dir():
            for group in self.groups.values():
                group.peak_sum_kib = max(group.peak_sum_kib, _psutil_tree_kib(group.roots()))
            return
        children = children_map()
        now = time.monotonic()
        pss_due = final or now - self._pss_at >= self.PSS_EVERY
        if pss_due:
            self._pss_at = now
        for group in self.groups.values():
            pids = descendants(group.roots(), children)
            group.members.update(pids)
            if group.mode == "pss":
                if not pss_due:
                    continue
                total = sum(_pss_kib(p) for p in pids)
            else:
                total = 0
                for pid in pids:
                    rss, hwm = _status_kib(pid)
                    total += rss
                    group.peak_single_kib = max(group.peak_single_kib, hwm)
            group.peak_sum_kib = max(group.peak_sum_kib, total)
            group.samples += 1
