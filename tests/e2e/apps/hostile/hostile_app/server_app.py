"""ServerApp whose behaviour the run config's `server` picks (see pyproject.toml)."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Iterable

import numpy as np

from flpg import ArrayRecord, ConfigRecord, Context, Grid, Message, ServerApp
from flpg.serverapp.strategy import FedAvg

app = ServerApp()

NASTY = "bad\x00text\x01\x07\x1b[31m red\r\x7f\udc80 end"
"""NUL, control characters, an ANSI escape, a carriage return and a lone surrogate."""


class TtlFedAvg(FedAvg):
    """FedAvg whose train messages expire after `ttl` seconds."""

    def __init__(self, ttl: float) -> None:
        super().__init__(min_available_nodes=2, min_train_nodes=1, fraction_evaluate=0.0)
        self.ttl = ttl

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        for message in messages:
            message.metadata.ttl = self.ttl
        return messages


def _fedavg(grid: Grid, context: Context) -> None:
    strategy = TtlFedAvg(float(context.run_config["ttl"]))
    result = strategy.start(
        grid, initial_arrays=ArrayRecord({"w": np.zeros(3)}), num_rounds=1, timeout=60
    )
    print("FINAL " + json.dumps(result.arrays["w"].numpy().tolist()), flush=True)


def _raise() -> None:
    for i in range(11):
        print(f"line {i}" + (" with a NUL \x00 inside" if i == 5 else ""), flush=True)
    raise RuntimeError(NASTY)


def _signal(number: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from SIGSEGV & co.
    time.sleep(1.0)  # let the heartbeat beat first (a stopped process then goes silent)
    os.kill(os.getpid(), number)
    print(f"survived signal {number}", flush=True)


def _huge(size: int) -> None:
    block = b"x" * (1 << 20)
    written = 0
    while written < size:
        n = min(len(block), size - written)
        sys.stdout.buffer.write(block[:n])
        written += n
    sys.stdout.buffer.write(b"\nafter the huge line\n")
    sys.stdout.flush()


def _binary() -> None:
    out = sys.stdout.buffer
    out.write(b"binary \xff\xfe start\n")
    out.write(b"nul \x00 and lone \x80 continuation\n")
    out.write(bytes(range(256)) + b"\n")
    out.flush()
    sys.stderr.buffer.write(b"stderr \xc3\x28 invalid\n")
    sys.stderr.flush()
    print("binary done", flush=True)


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    mode = cfg["server"]
    if mode == "fedavg":
        _fedavg(grid, context)
    elif mode == "raise":
        _raise()
    elif mode == "signal":
        _signal(int(cfg["signal"]))
    elif mode == "exit":
        sys.stdout.flush()
        os._exit(int(cfg["exit-code"]))
    elif mode == "huge":
        _huge(int(cfg["huge-bytes"]))
    elif mode == "binary":
        _binary()
    elif mode == "env":
        print("ENV " + json.dumps(sorted(os.environ)), flush=True)
    elif mode == "sleep":
        time.sleep(float(cfg["sleep"]))
    else:
        raise ValueError(f"unknown mode {mode!r}")
