"""A FedAvg driven by an app's own loop, as Flower's advanced examples drive it.

The app calls `configure_train` itself, sends the messages and hands FedAvg the list
of replies `grid.send_and_receive` gives (here `list(grid.receive(...))`, the same
list; the nodes answer from this test in between). The instructions carry
`server-round`, error replies and unusable replies are left out without raising,
and the stored reply arrays are read chunk by chunk, never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from flpg import bus
from flpg.app.message import Error, Message
from flpg.app.records import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy import FedAvg
from flpg.store import messages as store_messages
from flpg.store.db import Connection
from tests.db import _replies as reply_path

from .conftest import Federation, make_federation
from .test_checkpoints import launch

CHUNK = 1000


@pytest.fixture
def fed5(conn: Connection, db_url: str) -> Federation:
    return make_federation(conn, db_url, n_selected=5)


@pytest.fixture
def grid(conn: Connection, fed5: Federation) -> Iterator[Grid]:
    launch(conn, fed5.run_id)
    g = Grid(fed5.url, fed5.run_id, poll=0.5, chunk_size=CHUNK)
    try:
        yield g
    finally:
        g.close()


def answer_all(conn: Connection, fed: Federation) -> dict[int, int]:
    """The nodes' answers: node 0 all ones (weight 1), node 1 zeros (weight 3), node 2
    an error, node 3 no weight, node 4 the wrong shape. Node -> server-round seen."""
    rows = store_messages.claim(conn, worker="t", node_ids=fed.selected, lease=60, limit=100)
    seen: dict[int, int] = {}
    for msg in bus.load(conn, rows):
        node = msg.metadata.dst_node_id
        message_id = msg.metadata.message_id
        assert node is not None and message_id is not None
        config = msg.content["config"]
        assert isinstance(config, ConfigRecord)
        seen[node] = int(config["server-round"])  # type: ignore[arg-type]
        index = fed.selected.index(node)
        if index == 2:
            reply_path.error_reply(conn, "t", message_id, Error(0, "out of memory"))
            continue
        size = 3000 if index == 4 else 2000
        value = 1.0 if index == 0 else 0.0
        metrics = {"loss": float(index)} | ({} if index == 3 else {"num-examples": 1 + 2 * index})
        content = RecordDict(
            {
                "arrays": ArrayRecord({"w": np.full(size, value, np.float32)}),
                "metrics": MetricRecord(metrics),
            }
        )
        reply_path.reply(conn, "t", message_id, fed.run_id, Message(content, reply_to=msg), CHUNK)
    return seen


def test_an_apps_own_loop_gets_server_round_and_a_plain_list_aggregates(
    conn: Connection, fed5: Federation, grid: Grid, capsys: pytest.CaptureFixture[str]
) -> None:
    strategy = FedAvg(min_available_nodes=1)
    model = grid.save_checkpoint(0, ArrayRecord({"w": np.zeros(2000, np.float32)}))
    for server_round in (1, 2):
        messages = strategy.configure_train(server_round, model, ConfigRecord({"lr": 0.1}), grid)
        ids = grid.push_messages(messages)
        seen = answer_all(conn, fed5)
        assert seen == {node: server_round for node in fed5.selected}
        replies = list(grid.receive(ids, timeout=10))
        assert len(replies) == 5
        arrays, metrics = strategy.aggregate_train(server_round, replies)
        received = [
            rec for r in replies if r.has_content() for rec in r.content.array_records.values()
        ]
        assert not any(a.in_memory for rec in received for a in rec.values()), (
            "a reply's arrays were loaded whole instead of streamed"
        )
        assert arrays is not None
        np.testing.assert_array_equal(arrays["w"].numpy(), np.full(2000, 0.25, np.float32))
        assert metrics == MetricRecord({"loss": 0.75})
        lines = capsys.readouterr().out.splitlines()
        assert lines[0] == "aggregate_train: Received 2 results and 3 failures"
        assert any("out of memory" in line for line in lines[1:])
        assert any("no numeric metric 'num-examples'" in line for line in lines[1:])
        assert any("[3000]" in line for line in lines[1:])
