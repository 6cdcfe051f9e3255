"""`flpg ui`: the live, read-only web dashboard of one database (`flpg.ui`).

Connects as `--db URL`, a `--credentials` file (a user's: that user's runs only, as
row-level security decides; an auditor's: every run), or the embedded default, and
serves on 127.0.0.1 unless `--host` says otherwise. Needs the `ui` extra; without it,
one line says how to install it (exit 2). A port in use is one line (exit 5), a
database that is down one line (exit 3).
"""

from __future__ import annotations

import importlib.util

import click

from flpg.cli import options
from flpg.cli._base import handle_errors, open_db, user_db_option
from flpg.errors import ConfigError

PORT = options.Bounded(0, 65535, "a TCP port; 0 picks a free one")
EXTRA_MODULES = ("starlette", "uvicorn")


def require_extra() -> None:
    """ConfigError (exit 2) naming the install command unless the `ui` extra is installed."""
    missing = [m for m in EXTRA_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"flpg ui needs {' and '.join(missing)}: install the ui extra with "
            "pip install 'flpg[ui]'"
        )


@click.command("ui")
@user_db_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0: every interface; anyone who reaches it reads "
    "what the connecting role may read).",
)
@click.option("--port", type=PORT, default=8765, show_default=True, help="Port (0: any free).")
@click.option(
    "--poll",
    type=options.SECONDS,
    default=2.0,
    show_default=True,
    help="Safety-net poll of the database for changes flpg does not NOTIFY.",
)
@handle_errors
def ui_cmd(db: str | None, host: str, port: int, poll: float) -> None:
    """Serve a live dashboard of runs, nodes and metrics (read-only)."""
    require_extra()
    from flpg.ui.app import create_app
    from flpg.ui.server import bind, serve

    url, conn = open_db(db)
    conn.close()
    sock = bind(host, port)
    app = create_app(url, poll=poll)
    serve(app, sock, lambda where: click.echo(f"flpg ui: serving {where} (Ctrl-C stops)"))


COMMANDS = (ui_cmd,)
"""The commands this module adds to `flpg`."""
