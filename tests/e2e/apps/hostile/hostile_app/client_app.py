"""ClientApp whose behaviour the run config's `client` picks on one partition."""

from __future__ import annotations

import fcntl
import os
import resource
import sys

from flpg import ArrayRecord, ClientApp, ConfigRecord, Context, Message, MetricRecord, RecordDict

app = ClientApp()

NASTY = "bad\x00text\x01\x07\x1b[31m red\r\x7f\udc80 end"
GARBAGE = [
    b"\xff\xfe\x00 not json\n",
    b"[1, 2]\n",
    b'{"done": [{"id": "x"}]}\n',
    b'{"started": [999999999]}\n',
    b'{"done": [{"id": 999999999, "outcome": "replied", "detail": "", "seconds": 0}]}\n',
    b"y" * (5 << 20) + b"\n",
]
"""Written onto the process's protocol pipe to its node worker (mode "protocol")."""


def _protocol_pipes() -> list[int]:
    """The pipes this process writes to other than stdout and stderr: the protocol."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
        except OSError:
            continue
        if fd > 2 and target.startswith("pipe:") and writable:
            found.append(fd)
    return found


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    mode = str(cfg["client"])
    bad = int(context.node_config["partition-id"]) == int(cfg["bad-partition"])
    arrays = msg.content.array_records["arrays"]
    updated = ArrayRecord({name: array.numpy() + 1.0 for name, array in arrays.items()})
    metrics = MetricRecord({"num-examples": 10, "leaked": int("HOSTILE_SECRET" in os.environ)})
    content = RecordDict({"arrays": updated, "metrics": metrics})
    if bad and mode == "raise":
        raise ValueError(NASTY)
    if bad and mode == "metric-nul":
        metrics["loss\x00"] = 0.5
    if bad and mode == "config-nul":
        content["note"] = ConfigRecord({"text": NASTY, "list": ["a\x00", "b"]})
    if bad and mode == "binary":
        sys.stdout.buffer.write(b"client \xff\x00\x80 bytes\n" + bytes(range(256)))
        sys.stdout.flush()
        os.write(2, b"\xc3\x28\x00 raw stderr\n")
    if bad and mode == "protocol":
        for fd in _protocol_pipes():
            for chunk in GARBAGE:
                os.write(fd, chunk)
    if bad and mode == "signal":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file from SIGSEGV & co.
        os.kill(os.getpid(), int(cfg["signal"]))
    return Message(content, reply_to=msg)
