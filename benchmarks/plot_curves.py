"""Scaling curves from `vs_flower.py` results files.

    .venv/bin/python benchmarks/plot_curves.py RESULTS.json [...] --out-dir benchmarks/

draws

- `curve_nodes.png`: median round time against N at one model size (`--size`; by
  default the size of the files' `--sweep n` runs, else 16MB);
- `curve_size.png`: median round time against model size at one N (`--nodes`; by
  default the N of the `--sweep size` runs, else 8);

both log-log, one line per system and variant (flpg, flpg:NAME, Flower, the logged and
the unlogged floor; a row's `--label`, when given, in brackets). Only the matrix runs
count (not the extras). A run that failed or timed out is a missing point: the line
breaks there and a cross at the top of the plot, in the line's colour, says
"failed" or "timeout". When several files hold the same (line, x), the last file
given wins. A curve with no run at its fixed size (or N) is not drawn. Titles name
the machine (CPUs, memory, OS), PostgreSQL, Flower, the flpg commit and the dates.
The plotted numbers are printed too. Uses matplotlib's Agg backend (no display).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from harness.jsonlog import load
from harness.results import format_size, parse_size
from matplotlib.ticker import FixedLocator, NullLocator
from matplotlib.transforms import blended_transform_factory

NAMES = {
    "flpg": "flpg",
    "flower": "Flower",
    "floor": "floor (logged)",
    "floor:unlogged": "floor (unlogged)",
}
COLOURS = {"flpg": "C0", "Flower": "C3", "floor (logged)": "0.35", "floor (unlogged)": "0.6"}
STYLES = {"floor (logged)": "--", "floor (unlogged)": ":"}
MARKERS = "os^Dv"
"""One marker per `--label` (in order of appearance)."""
DEFAULT_SIZE = 16 << 20
DEFAULT_NODES = 8


@dataclass(frozen=True)
class Point:
    """One run on a curve: `seconds` is None when it did not finish (`status`)."""

    x: int
    seconds: float | None
    status: str


def series_name(run: dict[str, Any]) -> str:
    """The line a run belongs to: `flpg`, `flpg:int8`, `Flower`, `floor (unlogged)`,
    with ` [label]` when the run carries a label."""
    key = str(run.get("key") or run["system"])
    name = NAMES.get(key, key)
    label = str(run.get("label") or "")
    return f"{name} [{label}]" if label else name


def matrix_runs(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The matrix runs of every file, in file order."""
    return [run for doc in docs for run in doc["runs"] if run.get("kind", "matrix") == "matrix"]


def curve_points(runs: Iterable[dict[str, Any]], axis: str, fixed: int) -> dict[str, list[Point]]:
    """Lines of one curve: `axis` "nodes" keeps runs of `fixed` bytes and puts N on x;
    "size" keeps runs at N = `fixed` and puts the size on x. Points are sorted by x;
    a later run replaces an earlier one at the same (line, x)."""
    if axis not in ("nodes", "size"):
        raise ValueError(f"axis is nodes or size, not {axis!r}")
    lines: dict[str, dict[int, Point]] = {}
    for run in runs:
        if axis == "nodes" and run["size_bytes"] != fixed:
            continue
        if axis == "size" and run["nodes"] != fixed:
            continue
        x = int(run["nodes"] if axis == "nodes" else run["size_bytes"])
        ok = run["status"] == "ok" and run.get("median_round") is not None
        seconds = float(run["median_round"]) if ok else None
        lines.setdefault(series_name(run), {})[x] = Point(x, seconds, str(run["status"]))
    return {name: [pts[x] for x in sorted(pts)] for name, pts in lines.items()}


def pick_fixed(docs: Sequence[dict[str, Any]], axis: str) -> int:
    """The fixed value of a curve when not given: the most common size among
    `--sweep n` runs (axis nodes), or N among `--sweep size` runs (axis size);
    16MB / 8 when no file holds such a sweep."""
    sweep = "n" if axis == "nodes" else "size"
    field = "size_bytes" if axis == "nodes" else "nodes"
    seen = Counter(
        int(run[field])
        for doc in docs
        if (doc.get("plan") or {}).get("sweep") == sweep
        for run in matrix_runs([doc])
    )
    if seen:
        return seen.most_common(1)[0][0]
    return DEFAULT_SIZE if axis == "nodes" else DEFAULT_NODES


def _distinct(values: Iterable[Any]) -> str:
    out: list[str] = []
    for value in values:
        if value is not None and str(value) not in out:
            out.append(str(value))
    return " / ".join(out) or "?"


def machine_line(docs: Sequence[dict[str, Any]]) -> str:
    """Two lines, `2 CPUs, 24 GiB, Debian ...; 2026-12-07` and `PostgreSQL 15.20;
    Flower 1.42.0; flpg abc123`, from the files (distinct values joined by ` / `)."""
    machines = [doc.get("machine") or {} for doc in docs]
    versions = [doc.get("versions") or {} for doc in docs]
    host = _distinct(
        f"{m.get('cpus', '?')} CPUs, {float(m.get('mem_gib') or 0):.0f} GiB, {m.get('os', '?')}"
        for m in machines
    )
    dates = _distinct(str(doc.get("started_at") or "")[:10] for doc in docs)
    postgres = _distinct(str(v["postgresql"]).split()[0] for v in versions if v.get("postgresql"))
    return (
        f"{host}; {dates}\nPostgreSQL {postgres}; "
        f"Flower {_distinct(v.get('flower') for v in versions)}; "
        f"flpg {_distinct(v.get('flpg_commit') for v in versions)}"
    )


def _rounds(runs: Iterable[dict[str, Any]]) -> str:
    rounds = sorted({int(run["rounds"]) for run in runs})
    return _distinct(f"rounds 2..{r}" if r > 1 else "round 1" for r in rounds)


def draw(lines: dict[str, list[Point]], axis: str, title: str, out: Path) -> Path:
    """One log-log PNG of `lines` at `out` (see the module docstring)."""
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    xs = sorted({p.x for pts in lines.values() for p in pts})
    top = blended_transform_factory(ax.transData, ax.transAxes)
    labels = list(dict.fromkeys(_label(name) for name in sorted(lines, key=_order)))
    for i, (name, pts) in enumerate(sorted(lines.items(), key=lambda kv: _order(kv[0]))):
        colour = COLOURS.get(name.split(" [")[0], f"C{(i + 4) % 10}")
        ys = [p.seconds if p.seconds is not None else float("nan") for p in pts]
        ax.plot(
            [p.x for p in pts],
            ys,
            marker=MARKERS[labels.index(_label(name)) % len(MARKERS)],
            linestyle=STYLES.get(name.split(" [")[0], "-"),
            color=colour,
            label=name,
        )
        for p in pts:
            if p.seconds is None:
                y = 0.97 - 0.05 * (i % 6)
                ax.plot([p.x], [y], marker="x", markersize=9, color=colour, transform=top)
                ax.annotate(
                    p.status,
                    (p.x, y),
                    xycoords=top,
                    xytext=(-7, -3) if p.x == xs[-1] else (7, -3),
                    textcoords="offset points",
                    ha="right" if p.x == xs[-1] else "left",
                    fontsize=8,
                    color=colour,
                )
    ax.set_xscale("log", base=2)
    ax.margins(x=0.08)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(x) if axis == "nodes" else format_size(x) for x in xs])
    ax.set_xlabel("nodes (N)" if axis == "nodes" else "model size (float32 vector)")
    ax.set_ylabel("median round time, s (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="x at the top: run failed or timed out", title_fontsize=8, fontsize=9)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def _label(name: str) -> str:
    return name.partition(" [")[2]


def _order(name: str) -> tuple[int, str]:
    base = name.split(" [")[0]
    rank = {"flpg": 0, "Flower": 2, "floor (logged)": 3, "floor (unlogged)": 4}
    return (rank.get(base, 1), name)


def describe(lines: dict[str, list[Point]], axis: str) -> str:
    """The plotted numbers, one line per series."""
    fmt = str if axis == "nodes" else format_size
    return "\n".join(
        f"  {name}: "
        + ", ".join(
            f"{fmt(p.x)}={p.seconds:.3f}s" if p.seconds is not None else f"{fmt(p.x)}={p.status}"
            for p in pts
        )
        for name, pts in sorted(lines.items(), key=lambda kv: _order(kv[0]))
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Scaling curves from vs_flower.py results.")
    parser.add_argument("results", nargs="+", type=Path, help="vs_flower.py JSON files.")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--size", default=None, help="Model size of curve_nodes.png.")
    parser.add_argument("--nodes", type=int, default=None, help="N of curve_size.png.")
    args = parser.parse_args(argv)
    try:
        args.size_bytes = parse_size(args.size) if args.size else None
        args.docs = [load(path) for path in args.results]
    except ValueError as exc:
        parser.error(str(exc))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    runs = matrix_runs(args.docs)
    facts = machine_line(args.docs)
    size = args.size_bytes or pick_fixed(args.docs, "nodes")
    nodes = args.nodes or pick_fixed(args.docs, "size")
    curves = [
        ("nodes", size, f"Median round time vs N at {format_size(size)}", "curve_nodes.png"),
        ("size", nodes, f"Median round time vs model size at N={nodes}", "curve_size.png"),
    ]
    drawn = 0
    for axis, fixed, heading, filename in curves:
        lines = curve_points(runs, axis, fixed)
        if not lines:
            print(f"{filename}: no matrix run at {heading.split(' at ')[1]}; not drawn")
            continue
        chosen = [r for r in runs if (r["size_bytes"] if axis == "nodes" else r["nodes"]) == fixed]
        title = f"{heading} (FedAvg, median of {_rounds(chosen)})\n{facts}"
        out = draw(lines, axis, title, args.out_dir / filename)
        print(f"{out}:\n{describe(lines, axis)}")
        drawn += 1
    return 0 if drawn else 1


if __name__ == "__main__":
    sys.exit(main())
