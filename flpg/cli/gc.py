"""`flpg gc` (admin): free the payload chunks of runs that ended long ago.

Keeps every audit row (runs, messages, `arrays` rows with dtype, shape and digest,
logs, metrics) and each run's final model (its checkpoint's arrays) unless
`--no-keep-model`; never touches a run that has not ended, one that ended less than
`--older-than` ago, or one of the `--keep-last N` most recently ended runs
(`flpg.store.retention`). Bad input (a duration that is not one, a negative N) is
one line, exit 2; a role that is not admin, exit 6.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

import click

from flpg.cli import options
from flpg.cli._base import db_option, handle_errors, open_db
from flpg.errors import BadValue
from flpg.submit.limits import INT32_MAX

if TYPE_CHECKING:
    from flpg.store.retention import GcResult

UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
"""Duration units: seconds, minutes, hours, days, weeks."""

MAX_SECONDS = 36500 * 86400
"""The longest duration accepted (about a century: far inside timestamp range)."""

_DURATION = re.compile(r"^\s*(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw])?\s*$")


def parse_duration(text: str) -> float:
    """Seconds in `text`: a non-negative number with an optional unit s, m, h, d or w
    (`30d`, `12h`, `90`: seconds); BadValue otherwise or beyond MAX_SECONDS."""
    match = _DURATION.match(text)
    if match is None:
        raise BadValue(
            f"--older-than {text!r} is not a duration: a number and a unit "
            "s, m, h, d or w, e.g. 30d or 12h"
        )
    seconds = float(match["number"]) * UNITS[match["unit"] or "s"]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise BadValue(f"--older-than {text!r} is too long (at most {MAX_SECONDS // 86400}d)")
    return seconds


class Duration(click.ParamType[float]):
    """A duration (`parse_duration`), in seconds."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, int | float):
            return float(value)
        return parse_duration(str(value))


def human_bytes(n: int) -> str:
    """`n` bytes as PostgreSQL's pg_size_pretty would show it (`12 MB`, `3 kB`)."""
    size = float(n)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(size) < 10 * 1024 or unit == "TB":
            return f"{n} bytes" if unit == "bytes" else f"{round(size)} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@click.command("gc")
@click.option(
    "--older-than",
    type=Duration(),
    default="30d",
    show_default=True,
    metavar="DURATION",
    help="Only runs that ended at least this long ago (s, m, h, d or w: 30d, 12h).",
)
@click.option(
    "--keep-last",
    type=options.Bounded(0, INT32_MAX, "a number of runs"),
    default=0,
    show_default=True,
    metavar="N",
    help="Keep the N most recently ended runs entirely, however old.",
)
@click.option(
    "--keep-model/--no-keep-model",
    default=True,
    show_default=True,
    help="Keep each run's final model (its checkpoint's arrays; `flpg resume` needs it).",
)
@click.option("--dry-run", is_flag=True, help="Change nothing; report what would be freed.")
@db_option
@handle_errors
def gc_cmd(
    older_than: float, keep_last: int, keep_model: bool, dry_run: bool, db: str | None
) -> None:
    """Free the payload chunks of runs that ended long ago (admin); every audit row
    stays. Runs that have not ended, or ended recently, are skipped."""
    from flpg.store import retention

    _, conn = open_db(db)
    with conn:
        result = retention.collect_retired(
            conn,
            older_than=older_than,
            keep_last=keep_last,
            keep_model=keep_model,
            dry_run=dry_run,
        )
    _print_result(result, older_than=older_than, keep_last=keep_last, dry_run=dry_run)


def _duration_text(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= UNITS[unit] and seconds % UNITS[unit] == 0:
            return f"{int(seconds // UNITS[unit])}{unit}"
    return f"{seconds:g}s"


def _print_result(result: GcResult, *, older_than: float, keep_last: int, dry_run: bool) -> None:
    """What `flpg gc` freed (or would free) and what it skipped, one fact a line."""
    verb = "would free" if dry_run else "freed"
    touched = sorted(result.run_ids)
    shown = ", ".join(map(str, touched[:20])) + (", ..." if len(touched) > 20 else "")
    size = human_bytes(result.bytes)
    size += "" if size.endswith(" bytes") else f" ({result.bytes} bytes)"
    click.echo(
        f"gc{' (dry run: nothing changed)' if dry_run else ''}: {verb} {result.chunks} "
        f"chunk(s), {size}, of "
        f"{result.arrays} array(s) in {len(touched)} run(s){': ' + shown if shown else ''}"
    )
    click.echo(
        f"skipped: {result.active} active run(s), {result.recent} run(s) that ended "
        f"less than {_duration_text(older_than)} ago, {result.kept} run(s) kept by "
        f"--keep-last {keep_last}"
    )


COMMANDS = (gc_cmd,)
"""The commands this module adds to `flpg`."""
