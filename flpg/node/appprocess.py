"""One run's ClientApp on one node worker, in its own process.

`python -m flpg.node.appprocess --run RUN --worker WORKER --cache-dir DIR`, started by
a node worker with `FLPG_DATABASE_URL` set and an allowlisted environment
(`flpg.bundle.process`); its first connection is retried while the database is away
(`call_within`). The ClientApp is imported once and kept for the run's lifetime (with
`--cache-read-only`, as another OS user, it only checks the bundle its worker
extracted: `BundleCache.verified`); each node id it serves has its own Context, whose
`state` persists across the run's rounds (and lives only in this process).

The node worker writes batches of claimed messages on stdin (`flpg.node.protocol`);
`flpg.node.appserver.Server` queues them in order, loads their payloads a group at
a time, runs their handlers on `--concurrency` threads, and writes the replies (or
error replies) under the node worker's claim, many at a time: small payloads in one
statement, then every reply in one statement that notifies the run once
(`flpg.node.replies`). `flpg.node.runapp.RunApp` holds the app and its Contexts. On
its protocol pipe it reports `Started` before a handler runs, and `Done` for each
write. The protocol pipe is the original stdout;
the ClientApp's own prints go to stderr. End of stdin means: answer the messages not
started yet as released (nothing written), finish the others (up to `--grace`
seconds) and exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from flpg.bundle.process import call_within
from flpg.compat.flwr import install as install_flwr_alias
from flpg.lifecycle import keep_freed_memory
from flpg.node.appserver import Server
from flpg.node.runapp import RunApp
from flpg.settings import DATABASE_URL_ENV
from flpg.store.db import hot_pool

log = logging.getLogger("flpg.clientapp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flpg.node.appprocess")
    parser.add_argument("--run", type=int, required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--cache-read-only", action="store_true")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--grace", type=float, default=30.0)
    args = parser.parse_args(argv)

    # The protocol owns the original stdout; anything the app prints goes to stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s %(name)s[%(process)d] run {args.run} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    install_flwr_alias()  # `import flwr...` in the app resolves to flpg (flpg.compat.flwr)
    keep_freed_memory()  # payload chunk buffers are reused, not faulted in again
    url = os.environ[DATABASE_URL_ENV]
    # Retried while the database is away (a process started during a blip waits).
    app = call_within(
        url,
        f"flpg-clientapp-{args.run}",
        lambda conn: RunApp(conn, args.run, args.cache_dir, args.cache_read_only),
    )
    if app.load_error:
        log.warning("ClientApp did not load: %s", app.load_error)
    pool = hot_pool(url, f"flpg-clientapp-{args.run}")  # one loads payloads, one writes replies
    try:
        Server(pool, app, args.worker, out, args.concurrency).serve(sys.stdin, args.grace)
        if app.app is not None:  # the lifespans' teardowns, once the run is done here
            try:
                app.app.close()
            except Exception:
                log.exception("a ClientApp lifespan's teardown raised")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    # Handler threads may still run after the grace period: leave without joining
    # them (their claims lapse and the link re-queues or expires them).
    code = main()
    sys.stderr.flush()
    os._exit(code)
