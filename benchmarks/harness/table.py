"""The printed tables (Markdown pipe tables: readable in a terminal, pasteable in
an issue)."""

from __future__ import annotations

from collections.abc import Sequence

from harness.results import Config, Outcome, format_size

Cell = str
DASH = "-"


LEFT = {"system", "what", "note", "label", "flpg run"}
"""Text columns, aligned left (numbers align right)."""


def render(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|"
        + "|".join(
            ":" + "-" * (w + 1) if h in LEFT else "-" * (w + 1) + ":"
            for w, h in zip(widths, headers, strict=True)
        )
        + "|",
    ]
    for row in rows:
        cells = [
            c.ljust(w) if h in LEFT else c.rjust(w)
            for c, w, h in zip(row, widths, headers, strict=True)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def secs(value: float | None) -> Cell:
    if value is None:
        return DASH
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def mib(value: float | None) -> Cell:
    return DASH if value is None or value <= 0 else f"{value:.0f}"


def status_or(outcome: Outcome | None, value: Cell) -> Cell:
    """`value` for a run that worked; otherwise what happened to it."""
    if outcome is None:
        return DASH
    return value if outcome.ok else outcome.status


def ratio(num: float | None, den: float | None, fmt: str) -> Cell:
    if num is None or den is None or den <= 0:
        return DASH
    return fmt.format(num / den)


class Footnotes:
    """Numbered reasons for failed cells, printed under a table."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def mark(self, outcome: Outcome | None, cell: Cell) -> Cell:
        if outcome is None or outcome.ok:
            return cell
        first = " ".join(outcome.reason.strip().splitlines()[:1])[:300] or outcome.status
        self.notes.append(f"{outcome.key} {outcome.config.label}: {outcome.status}: {first}")
        return f"{cell} [{len(self.notes)}]"

    def render(self) -> str:
        return "\n".join(f"[{i}] {note}" for i, note in enumerate(self.notes, 1))


MAIN_HEADERS = [
    "N",
    "size",
    "floor s",
    "floor unlogged s",
    "flpg s",
    "flpg % of floor",
    "% of floor (unlogged)",
    "Flower s",
    "flpg speed-up",
    "flpg start s",
    "Flower start s",
    "flpg server MB",
    "flpg ServerApp MB",
    "flpg node MB",
    "PG MB",
    "Flower server MB",
    "Flower node MB",
]
MAIN_LEGEND = (
    "Round times: median over rounds 2..R, seconds. 'floor s' moves the bytes through a "
    "logged table, 'floor unlogged s' through an UNLOGGED one (the same-class floor for "
    "payloads flpg stores unlogged); flpg's % of each is floor time / flpg time. MB = MiB "
    "of peak memory (RSS of process trees; flpg server = link + exec + ServerApp, flpg "
    "ServerApp = the run's ServerApp process alone; PG = PostgreSQL PSS). The detail "
    "table's 'others CPU' is the share of the machine's CPU that processes outside the "
    "benchmark used during a run: well above 0 % means other work competed and the "
    "times are pessimistic."
)
"""The paragraph printed above `main_table`."""
Results = dict[tuple[str, Config], Outcome]
"""Outcomes by (`Outcome.key`, configuration)."""


def main_table(
    configs: Sequence[Config],
    results: Results,
    flpg_keys: Sequence[str] = ("flpg",),
    label: str = "",
) -> str:
    """One row per configuration and flpg key (`flpg`, `flpg:int8`, ...): both floors
    (logged, unlogged), that flpg and Flower side by side; the flpg key is a column
    when there are several, and `label` one when given."""
    notes = Footnotes()
    keys = list(flpg_keys) or ["flpg"]
    lead = (["label"] if label else []) + (["flpg run"] if len(keys) > 1 else [])
    rows = [
        [label] * bool(label) + [key] * (len(keys) > 1) + main_row(config, results, key, notes)
        for config in configs
        for key in keys
    ]
    out = render([*lead, *MAIN_HEADERS], rows)
    return out + ("\n" + notes.render() if notes.notes else "")


def main_row(config: Config, results: Results, flpg_key: str, notes: Footnotes) -> list[Cell]:
    floor = results.get(("floor", config))
    unlogged = results.get(("floor:unlogged", config))
    flpg = results.get((flpg_key, config))
    flower = results.get(("flower", config))
    f_round = floor.median_round if floor else None
    u_round = unlogged.median_round if unlogged else None
    p_round = flpg.median_round if flpg else None
    w_round = flower.median_round if flower else None
    return [
        str(config.nodes),
        format_size(config.nbytes),
        notes.mark(floor, status_or(floor, secs(f_round))),
        notes.mark(unlogged, status_or(unlogged, secs(u_round))),
        notes.mark(flpg, status_or(flpg, secs(p_round))),
        ratio(f_round, p_round, "{:.0%}"),
        ratio(u_round, p_round, "{:.0%}"),
        notes.mark(flower, status_or(flower, secs(w_round))),
        ratio(w_round, p_round, "{:.1f}x"),
        status_or(flpg, secs(flpg.startup if flpg else None)),
        status_or(flower, secs(flower.startup if flower else None)),
        mib(flpg.rss_mib.get("server") if flpg else None),
        mib(flpg.rss_mib.get("serverapp") if flpg else None),
        mib(flpg.rss_mib.get("node") if flpg else None),
        mib(flpg.rss_mib.get("pg") if flpg else None),
        mib(flower.rss_mib.get("server") if flower else None),
        mib(flower.rss_mib.get("node") if flower else None),
    ]


DETAIL_HEADERS = [
    "system",
    "N",
    "size",
    "status",
    "round times s",
    "median r2.. s",
    "start s",
    "total s",
    "harness wall s",
    "others CPU",
    "note",
]


def detail_table(outcomes: Sequence[Outcome]) -> str:
    """Every run: each round's time, start-up, total and what the harness spent."""
    rows = [
        [
            o.key,
            str(o.config.nodes),
            format_size(o.config.nbytes),
            o.status,
            " ".join(f"{s:.2f}" for s in o.round_seconds) or DASH,
            secs(o.median_round),
            secs(o.startup),
            secs(o.total),
            f"{o.wall:.0f}",
            DASH if o.other_cpu is None else f"{o.other_cpu:.0%}",
            o.note,
        ]
        for o in outcomes
    ]
    return render(DETAIL_HEADERS, rows)


def extras_fedavg_table(outcomes: Sequence[Outcome]) -> str:
    """A few FedAvg runs (virtual nodes, the big model) as rows."""
    notes = Footnotes()
    headers = [
        "system",
        "N",
        "size",
        "rounds",
        "round s",
        "start s",
        "total s",
        "server MB",
        "node MB",
        "PG MB",
    ]
    rows = [
        [
            o.key,
            str(o.config.nodes),
            format_size(o.config.nbytes),
            str(o.config.rounds),
            notes.mark(o, status_or(o, secs(o.median_round))),
            status_or(o, secs(o.startup)),
            status_or(o, secs(o.total)),
            mib(o.rss_mib.get("server")),
            mib(o.rss_mib.get("node")),
            mib(o.rss_mib.get("pg")),
        ]
        for o in outcomes
    ]
    out = render(headers, rows)
    return out + ("\n" + notes.render() if notes.notes else "")


def throughput_table(outcomes: Sequence[tuple[int, Outcome]]) -> str:
    notes = Footnotes()
    headers = [
        "node workers",
        "messages",
        "msg/s first push -> last reply",
        "msg/s first -> last reply",
        "workers that claimed",
        "node MB (all workers)",
    ]
    rows = []
    for workers, o in outcomes:
        rate = o.extra.get("rate")
        rows.append(
            [
                str(workers),
                f"{o.extra.get('messages', 0):.0f}" if o.ok else DASH,
                notes.mark(o, status_or(o, f"{rate:.0f}" if rate else DASH)),
                status_or(o, f"{o.extra.get('steady_rate', 0):.0f}"),
                status_or(o, f"{o.extra.get('workers_used', 0):.0f}"),
                mib(o.rss_mib.get("node")),
            ]
        )
    out = render(headers, rows)
    return out + ("\n" + notes.render() if notes.notes else "")


def idle_table(outcomes: Sequence[Outcome]) -> str:
    notes = Footnotes()
    headers = ["system", "what", "idle MB (fresh)", "idle MB (after a 1-round run)"]
    rows = []
    for o in outcomes:
        what = (
            "flpg node worker (+ ClientApp processes it still holds)"
            if o.system == "flpg"
            else "flower-supernode + its flower-superexec"
        )
        rows.append(
            [
                o.system,
                what,
                notes.mark(o, status_or(o, mib(o.extra.get("fresh_mib")))),
                status_or(o, mib(o.extra.get("after_run_mib"))) if o.system == "flpg" else DASH,
            ]
        )
    out = render(headers, rows)
    return out + ("\n" + notes.render() if notes.notes else "")
