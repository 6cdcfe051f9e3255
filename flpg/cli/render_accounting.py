"""Output of `flpg pull`, and the accounting and artifact lines of `flpg show`
(beside `flpg.cli.render`, whose `run_details` calls `show_doc` and `show_text`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from flpg.store.accounting import RunAccounting
    from flpg.store.pull import Model

LABEL = 14
"""Width of the `key:` column of `flpg show`'s text."""


def size(n: int) -> str:
    """`384 B`, `1.5 KiB`, `128.0 MiB`: bytes in binary units, one decimal."""
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def show_doc(acc: RunAccounting | None, where: str | None) -> dict[str, Any]:
    """`flpg show --format json`'s `accounting` and `artifacts` keys (none without
    `acc`)."""
    return {} if acc is None else {"accounting": accounting_doc(acc), "artifacts": where}


def show_text(acc: RunAccounting | None, where: str | None) -> None:
    """`flpg show`'s accounting lines and artifact directory (nothing without `acc`)."""
    if acc is not None:
        accounting_text(acc)
        artifacts_text(where)


def accounting_doc(acc: RunAccounting) -> dict[str, Any]:
    """`flpg show --format json`'s `accounting`: the run's numbers and its nodes'."""
    return {
        "instructions": acc.instructions,
        "replies": acc.replies,
        "messages": acc.messages,
        "bytes_sent": acc.bytes_sent,
        "bytes_received": acc.bytes_received,
        "clientapp_seconds": acc.clientapp_seconds,
        "wait_seconds": acc.wait_seconds,
        "launches": acc.launches,
        "serverapp_seconds": acc.serverapp_seconds,
        "queue_seconds": acc.queue_seconds,
        "nodes": [
            {
                "node_id": n.node_id,
                "node_name": n.node_name,
                "instructions": n.instructions,
                "replies": n.replies,
                "messages": n.messages,
                "bytes_received": n.bytes_received,
                "bytes_sent": n.bytes_sent,
                "clientapp_seconds": n.clientapp_seconds,
                "wait_seconds": n.wait_seconds,
            }
            for n in acc.nodes
        ],
    }


def accounting_text(acc: RunAccounting) -> None:
    """`flpg show`'s accounting lines: traffic, then time, then one line per node."""
    click.echo(
        f"{'traffic:':{LABEL}} {acc.instructions} instructions sent ({size(acc.bytes_sent)}), "
        f"{acc.replies} replies received ({size(acc.bytes_received)})"
    )
    launches = f"{acc.launches} launch" + ("" if acc.launches == 1 else "es")
    click.echo(
        f"{'time:':{LABEL}} ServerApp {seconds(acc.serverapp_seconds)} ({launches}), "
        f"ClientApps {seconds(acc.clientapp_seconds)}, messages waiting "
        f"{seconds(acc.wait_seconds)}, queued {seconds(acc.queue_seconds)}"
    )
    for n in acc.nodes:
        click.echo(
            f"{'  node ' + str(n.node_id) + ':':{LABEL}} {n.node_name}: "
            f"{n.instructions} in ({size(n.bytes_received)}), "
            f"{n.replies} out ({size(n.bytes_sent)}), ClientApp "
            f"{seconds(n.clientapp_seconds)}, waiting {seconds(n.wait_seconds)}"
        )


def artifacts_text(where: str | None) -> None:
    """`flpg show`'s line naming the run's artifact directory, if one was recorded."""
    if where is not None:
        click.echo(f"{'artifacts:':{LABEL}} {where}")


def pulled_model(model: Model, path: Path, fmt: str) -> None:
    """`flpg pull`: which checkpoint went where."""
    count = len(model.arrays)
    click.echo(
        f"run {model.run_id}: model of round {model.round} ({count} "
        f"array{'' if count == 1 else 's'}, {size(model.nbytes)}) written to {path} ({fmt})"
    )


def pulled_metrics(run_id: int, rows: int, path: Path) -> None:
    """`flpg pull --metrics`: how many round records went where."""
    click.echo(f"run {run_id}: {rows} round record{'' if rows == 1 else 's'} written to {path}")


def artifacts(where: str | None) -> None:
    """`flpg pull`: where the ServerApp's own files are (on the exec's machine)."""
    if where is not None:
        click.echo(f"ServerApp files (artifact directory, on the exec's machine): {where}")
