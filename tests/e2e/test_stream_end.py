"""`flpg run --stream` shows every line the ServerApp printed, even when the run's
outcome is recorded before its exec has stored the last lines.

The ServerApp records `finished` itself, while its output still travels through its
exec (a pipe, then the exec's batching log writer). The test makes that window as
wide as it likes, deterministically: it freezes the exec (SIGSTOP) before the
ServerApp prints its last lines, waits until the run is `finished` in the database,
and only then lets the exec go on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import Federation, wait_for

pytestmark = pytest.mark.e2e

LINES = 200

PYPROJECT = """
[project]
name = "e2e-last-lines"
version = "0.1.0"

[tool.flpg.app.components]
serverapp = "lastlines.server_app:app"
clientapp = "lastlines.client_app:app"

[tool.flpg.app.config]
go-file = ""
lines = 1
"""

SERVER_APP = """
import os
import time

from flpg import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    print("waiting for the go file", flush=True)
    deadline = time.monotonic() + 120
    while not os.path.exists(context.run_config["go-file"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for i in range(context.run_config["lines"]):
        print(f"LAST {i}")
    print("THE END", flush=True)
"""

CLIENT_APP = """
from flpg import ClientApp

app = ClientApp()
"""


def write_app(root: Path) -> Path:
    app = root / "last-lines"
    (app / "lastlines").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "lastlines" / "__init__.py").write_text("")
    (app / "lastlines" / "server_app.py").write_text(SERVER_APP)
    (app / "lastlines" / "client_app.py").write_text(CLIENT_APP)
    return app


def test_stream_shows_the_lines_the_exec_still_held_when_the_run_finished(
    federation: Federation, tmp_path: Path
) -> None:
    fed = federation
    fed.sql("INSERT INTO nodes (name) VALUES ('n0')")
    exec_proc = fed.exec()
    go = tmp_path / "go"
    config = f'go-file="{go}" lines={LINES}'
    stream = subprocess.Popen(
        [fed.flpg, "run", str(write_app(tmp_path)), "--stream", "--run-config", config],
        env=fed.env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: fed.scalar("SELECT count(*) FROM run_logs WHERE line LIKE 'waiting%'"),
            timeout=90,
            what="the ServerApp to start",
        )
        os.kill(exec_proc.pid, signal.SIGSTOP)
        try:
            go.touch()
            wait_for(
                lambda: fed.scalar("SELECT status::text FROM runs") == "finished",
                timeout=60,
                what="the ServerApp to record its outcome",
            )
            assert fed.scalar("SELECT count(*) FROM run_logs WHERE line = 'THE END'") == 0
            # A follower that stopped at the status change would end here, without the
            # lines the frozen exec still holds; this one waits for them.
            with contextlib.suppress(subprocess.TimeoutExpired):
                stream.wait(timeout=3)
            assert stream.poll() is None, stream.communicate()
        finally:
            os.kill(exec_proc.pid, signal.SIGCONT)
        out, err = stream.communicate(timeout=60)
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.communicate()
    assert stream.returncode == 0, (out, err)
    lines = out.splitlines()
    assert [line for line in lines if line.startswith("LAST ")] == [
        f"LAST {i}" for i in range(LINES)
    ]
    assert lines[-3:] == [
        "THE END",
        "[event] ServerApp exited with code 0: finished",
        "run 1 finished",
    ]
    assert err == ""
