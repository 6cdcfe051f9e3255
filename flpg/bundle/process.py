"""The app processes that workers start (a run's ServerApp on an exec, a run's
ClientApp on a node): the environment they get, and how one ended, in words.

App code is tenant code. It gets only what it needs from its worker's environment
(`app_environment`), never the rest (other services' tokens, cloud credentials,
anything an operator exported for the worker alone):

- `PATH`, `HOME`, `USER`, `LOGNAME`, `TMPDIR`, `TZ`, `LANG`, `LANGUAGE` and every
  `LC_*`: what ordinary programs, Python and its libraries expect (temporary files,
  `~/.cache`, text encoding, local time);
- `LD_LIBRARY_PATH`: some Python installations need it to start at all;
- `PYTHONPATH` only when flpg itself was found through it, and then only that
  entry: the process must import flpg; the app's own modules come from its bundle;
- `XDG_CACHE_HOME` and every `FLPG_*` variable: flpg's own settings (the timing
  intervals, the bundle cache directory); the database URL among them is set
  explicitly by the worker, since the process connects with it;
- libpq's own variables (`PGPASSFILE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGHOST`, ...,
  `LIBPQ_VARIABLES`): the URL may rely on them to connect;
- the names an operator lists in `FLPG_APP_ENV` (separated by spaces or commas),
  e.g. `FLPG_APP_ENV="CUDA_VISIBLE_DEVICES OMP_NUM_THREADS"`.

The database URL the worker sets is that of a run role bound to the process's run
(docs/security.md, "Run roles"); with `--app-user` the process also runs as another
OS user (`flpg.bundle.appuser`, which adjusts this environment: `AppSeat.environment`).

An app process started during a database blip retries its first connections with
backoff for up to CONNECT_WITHIN s (`call_within`), as every worker does.
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from flpg.store.db import Connection, Session

T = TypeVar("T")

CONNECT_WITHIN = 30.0
"""Seconds an app process retries its first connections while the database is away:
the link's start-up allowance (`flpg.link.worker.STARTUP`), within which the link does
not fail a launched run whose ServerApp has not heart-beaten yet."""

APP_ENV_VARIABLE = "FLPG_APP_ENV"
"""Names of further worker variables an operator passes to app processes."""

PASSED = ("PATH", "HOME", "USER", "LOGNAME", "TMPDIR", "TZ", "LANG", "LANGUAGE")
PASSED_PREFIXES = ("LC_", "FLPG_")
INTERPRETER = ("LD_LIBRARY_PATH",)
LIBPQ_VARIABLES = (
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGDATABASE",
    "PGUSER",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGREQUIREAUTH",
    "PGCHANNELBINDING",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGREQUIRESSL",
    "PGSSLNEGOTIATION",
    "PGSSLCOMPRESSION",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGSSLCERTMODE",
    "PGSSLROOTCERT",
    "PGSSLCRL",
    "PGSSLCRLDIR",
    "PGSSLSNI",
    "PGREQUIREPEER",
    "PGSSLMINPROTOCOLVERSION",
    "PGSSLMAXPROTOCOLVERSION",
    "PGGSSENCMODE",
    "PGKRBSRVNAME",
    "PGGSSLIB",
    "PGGSSDELEGATION",
    "PGCONNECT_TIMEOUT",
    "PGCLIENTENCODING",
    "PGTARGETSESSIONATTRS",
    "PGLOADBALANCEHOSTS",
    "PGSYSCONFDIR",
    "PGLOCALEDIR",
    "PGTZ",
    "PGDATESTYLE",
    "PGGEQO",
)
CACHE = ("XDG_CACHE_HOME",)

_FLPG_ROOT = Path(__file__).resolve().parents[2]
"""The directory holding the `flpg` package."""


def _passed(name: str, extra: set[str]) -> bool:
    return (
        name in PASSED
        or name.startswith(PASSED_PREFIXES)
        or name in INTERPRETER
        or name in LIBPQ_VARIABLES
        or name in CACHE
        or name in extra
    )


def _flpg_pythonpath(value: str) -> str | None:
    """The entry of `value` (a PYTHONPATH) through which flpg is imported, if any."""
    for entry in value.split(os.pathsep):
        if entry and Path(entry).resolve() == _FLPG_ROOT:
            return entry
    return None


def app_environment(
    extra: Mapping[str, str], source: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of an app process: the allowed variables of `source` (the
    worker's own, by default; see the module docstring), then `extra` on top."""
    source = os.environ if source is None else source
    named = {n for n in re.split(r"[\s,]+", source.get(APP_ENV_VARIABLE, "")) if n}
    env = {k: v for k, v in source.items() if _passed(k, named)}
    entry = _flpg_pythonpath(source.get("PYTHONPATH", ""))
    if entry is not None:
        env["PYTHONPATH"] = entry
    env.update(extra)
    return env


def signal_name(number: int) -> str:
    """`SIGKILL`, `SIGRTMIN+1`, or `signal 32` for a number without a name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        pass
    low = getattr(signal, "SIGRTMIN", None)
    high = getattr(signal, "SIGRTMAX", None)
    if low is not None and high is not None and low < number < high:
        return f"SIGRTMIN+{number - int(low)}"
    return f"signal {number}"


def describe_exit(returncode: int) -> str:
    """`exited with code 3`, `was killed by SIGKILL`, `was killed by SIGRTMIN+1` or
    `was killed by signal 32`: any return code of `subprocess`, never raises."""
    if returncode < 0:
        return f"was killed by {signal_name(-returncode)}"
    return f"exited with code {returncode}"


def call_within(
    url: str, application_name: str, fn: Callable[[Connection], T], within: float = CONNECT_WITHIN
) -> T:
    """`fn(conn)` on a connection of its own, reconnecting with backoff while the
    database is away (`flpg.store.db.Session.call`), for `within` s at most; then the last
    connection error is raised. `fn` must be safe to repeat."""
    give_up = threading.Event()
    timer = threading.Timer(within, give_up.set)
    timer.daemon = True
    timer.start()
    session = Session(url, application_name=application_name, stop=give_up)
    try:
        return session.call(fn)
    finally:
        timer.cancel()
        session.close()
