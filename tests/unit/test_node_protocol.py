"""The pipe between a node worker and a run's ClientApp process (`flpg.node.protocol`):
every message survives a round trip, and a line that is not exactly a message is
refused with `ProtocolError` (app code can write anything on that pipe)."""

from __future__ import annotations

import json

import pytest

from flpg.node.protocol import (
    Batch,
    Done,
    Outcome,
    ProtocolError,
    Settled,
    Started,
    decode_batch,
    decode_report,
    encode_batch,
    encode_report,
)
from flpg.store.messages import MessageRow


def row(message_id: int, node_id: int | None) -> MessageRow:
    return MessageRow(
        message_id,
        3,
        None,
        node_id,
        None,
        "g\x00",
        "train",
        12.5,
        1_700_000_000.25,
        {"m": {"metrics": {"x": 1.5}}},
        {"c": {"text": "é\n"}},
        attempts=2,
    )


def test_a_batch_round_trips_with_only_its_nodes_configs() -> None:
    rows = [row(1, 10), row(2, 11), row(3, 10)]
    configs = {10: {"partition-id": 0}, 11: {"partition-id": 1}, 12: {"unused": True}}
    line = encode_batch(rows, configs)
    assert "\n" not in line
    batch = decode_batch(line)
    assert batch == Batch(rows, {10: {"partition-id": 0}, 11: {"partition-id": 1}})
    assert [batch.node_config(r)["partition-id"] for r in rows] == [0, 1, 0]
    assert decode_batch(line.encode()) == batch  # as bytes too


def test_a_node_without_a_config_gets_an_empty_one() -> None:
    batch = decode_batch(encode_batch([row(1, 10), row(2, None)], {}))
    assert [batch.node_config(r) for r in batch.messages] == [{}, {}]


@pytest.mark.parametrize(
    "report",
    [
        Started([1, 2, 3]),
        Started([]),
        Done([]),
        Done(
            [
                Settled(1, Outcome.REPLIED, "0.012 s", 0.012),
                Settled(2, Outcome.ERROR, "ValueError: bad\x00\n", 1.5),
                Settled(3, Outcome.LEASE_LOST, "gone"),
                Settled(4, Outcome.EXPIRED, "its TTL passed"),
                Settled(5, Outcome.RELEASED, "not started"),
            ]
        ),
    ],
)
def test_reports_round_trip(report: Started | Done) -> None:
    line = encode_report(report)
    assert "\n" not in line
    assert decode_report(line) == report
    assert decode_report(line.encode()) == report


def test_outcomes_are_their_wire_strings() -> None:
    assert [str(o) for o in Outcome] == ["replied", "error", "lease-lost", "expired", "released"]
    (settled,) = json.loads(encode_report(Done([Settled(1, Outcome.LEASE_LOST, "")])))["done"]
    assert settled["outcome"] == "lease-lost"
    decoded = decode_report(
        '{"done": [{"id": 1, "outcome": "expired", "detail": "", "seconds": 0}]}'
    )
    assert isinstance(decoded, Done) and decoded.settled[0].outcome is Outcome.EXPIRED


GOOD = {"id": 1, "outcome": "replied", "detail": "", "seconds": 0.5}

MALFORMED_REPORTS: list[bytes | str] = [
    b"",
    b"\xff\xfe\x00 not json\n",
    b"\xc3\x28\n",
    b"not json",
    b"[1, 2]",
    b'"started"',
    b"null",
    b"{}",
    b"[" * 100_000 + b"]" * 100_000,  # nested too deep for the parser
    b"y" * (1 << 20),
    json.dumps({"started": [1], "done": []}),
    json.dumps({"started": [1], "extra": 1}),
    json.dumps({"started": 1}),
    json.dumps({"started": ["1"]}),
    json.dumps({"started": [1.0]}),
    json.dumps({"started": [True]}),
    json.dumps({"started": [None]}),
    json.dumps({"done": {"id": 1}}),
    json.dumps({"done": [{"id": "x"}]}),
    json.dumps({"done": [1]}),
    json.dumps({"done": [{**GOOD, "id": "1"}]}),
    json.dumps({"done": [{**GOOD, "id": False}]}),
    json.dumps({"done": [{**GOOD, "outcome": "done"}]}),
    json.dumps({"done": [{**GOOD, "outcome": None}]}),
    json.dumps({"done": [{**GOOD, "detail": None}]}),
    json.dumps({"done": [{**GOOD, "seconds": "0.5"}]}),
    json.dumps({"done": [{**GOOD, "seconds": -1}]}),
    json.dumps({"done": [{**GOOD, "seconds": True}]}),
    '{"done": [{"id": 1, "outcome": "replied", "detail": "", "seconds": NaN}]}',
    '{"done": [{"id": 1, "outcome": "replied", "detail": "", "seconds": Infinity}]}',
    json.dumps({"done": [{k: v for k, v in GOOD.items() if k != "seconds"}]}),
    json.dumps({"done": [{**GOOD, "more": 1}]}),
    json.dumps({"done": [GOOD, {"id": 2}]}),  # one bad entry spoils the line
]


@pytest.mark.parametrize("line", MALFORMED_REPORTS, ids=lambda line: repr(line)[:40])
def test_malformed_reports_are_refused(line: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_report(line)


def test_an_error_names_a_huge_line_in_a_few_characters() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_report(json.dumps({"started": "z" * (1 << 20)}))
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"[]",
        json.dumps({"node_configs": {}}),
        json.dumps({"messages": {}}),
        json.dumps({"messages": [1]}),
        json.dumps({"messages": [{"id": 1}]}),  # fields missing
        json.dumps({"messages": [{"nope": 1}]}),
        json.dumps({"messages": [], "node_configs": []}),
        json.dumps({"messages": [], "node_configs": {"x": {}}}),
        json.dumps({"messages": [], "node_configs": {"1": 2}}),
    ],
    ids=lambda line: repr(line)[:40],
)
def test_malformed_batches_are_refused(line: bytes | str) -> None:
    with pytest.raises(ProtocolError):
        decode_batch(line)
