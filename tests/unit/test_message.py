"""Tests for flpg.app.message: the Message constructor rules and accessors."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest

from flpg.app.message import (
    DEFAULT_TTL,
    Error,
    ErrorCode,
    Message,
    MessageType,
    Metadata,
)
from flpg.app.records import ArrayRecord, ConfigRecord, RecordDict


def content() -> RecordDict:
    return RecordDict({"arrays": ArrayRecord([np.zeros(2)]), "config": ConfigRecord({"lr": 0.1})})


def sent_instruction(**kwargs: Any) -> Message:
    """An instruction as the store would have it after sending."""
    msg = Message(content(), 5, MessageType.TRAIN, **kwargs)
    msg.metadata.run_id = 7
    msg.metadata.message_id = 42
    msg.metadata.created_at = 1000.0
    return msg


def test_constants() -> None:
    assert (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY) == (
        "train",
        "evaluate",
        "query",
    )
    assert [
        ErrorCode.UNKNOWN,
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.REPLY_REJECTED,
        ErrorCode.RUN_STOPPED,
    ] == [0, 1, 2, 3, 4, 5]
    assert DEFAULT_TTL == 3600.0


def test_error_is_frozen() -> None:
    err = Error(code=ErrorCode.UNKNOWN, reason="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        err.code = 1  # type: ignore[misc]


# --- instructions -------------------------------------------------------------


def test_instruction_metadata() -> None:
    body = content()
    msg = Message(body, 5, MessageType.TRAIN)
    assert msg.content is body
    assert msg.has_content() and not msg.has_error()
    assert msg.metadata == Metadata(
        run_id=0,
        message_id=None,
        src_node_id=None,
        dst_node_id=5,
        reply_to_message_id=None,
        group_id="",
        ttl=DEFAULT_TTL,
        message_type="train",
        created_at=None,
    )
    assert msg.metadata.expires_at is None


def test_instruction_ttl_and_group_id() -> None:
    msg = Message(content(), 3, "query.custom", ttl=30, group_id="round-4")
    assert msg.metadata.ttl == 30.0
    assert type(msg.metadata.ttl) is float
    assert msg.metadata.group_id == "round-4"
    assert msg.metadata.message_type == "query.custom"
    msg.metadata.created_at = 100.0
    assert msg.metadata.expires_at == 130.0


def test_content_message_has_no_error() -> None:
    msg = Message(content(), 1, MessageType.EVALUATE)
    with pytest.raises(ValueError, match="content, not an error"):
        _ = msg.error


@pytest.mark.parametrize("message_type", ["", "   "])
def test_instruction_needs_non_empty_message_type(message_type: str) -> None:
    with pytest.raises(ValueError, match="message_type"):
        Message(content(), 1, message_type)


def test_instruction_message_type_must_be_str() -> None:
    with pytest.raises(TypeError, match="message_type"):
        Message(content(), 1, 3)  # type: ignore[call-overload]


@pytest.mark.parametrize("ttl", [0, -1.0, math.nan, math.inf])
def test_instruction_ttl_must_be_positive_and_finite(ttl: float) -> None:
    with pytest.raises(ValueError, match="ttl"):
        Message(content(), 1, MessageType.TRAIN, ttl=ttl)


def test_instruction_ttl_must_be_a_number() -> None:
    with pytest.raises(TypeError, match="ttl"):
        Message(content(), 1, MessageType.TRAIN, ttl="60")  # type: ignore[call-overload]


@pytest.mark.parametrize("dst", [True, "5", 5.0])
def test_instruction_dst_must_be_int(dst: Any) -> None:
    with pytest.raises(TypeError, match="dst_node_id"):
        Message(content(), dst, MessageType.TRAIN)


def test_instruction_needs_dst_and_type() -> None:
    with pytest.raises(TypeError, match="dst_node_id and message_type"):
        Message(content())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="dst_node_id and message_type"):
        Message(content(), 1)  # type: ignore[call-overload]


def test_instruction_content_must_be_record_dict() -> None:
    with pytest.raises(TypeError, match="RecordDict"):
        Message({"config": ConfigRecord()}, 1, MessageType.TRAIN)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="RecordDict"):
        Message(None, 1, MessageType.TRAIN)  # type: ignore[call-overload]


def test_instruction_cannot_carry_an_error() -> None:
    with pytest.raises(TypeError, match="reply"):
        Message(error=Error(0, "x"))  # type: ignore[call-overload]


def test_message_passed_positionally_hints_at_reply_to() -> None:
    with pytest.raises(TypeError, match="reply_to="):
        Message(content(), sent_instruction())  # type: ignore[call-overload]


# --- replies ------------------------------------------------------------------


def test_content_reply_copies_routing_from_the_instruction() -> None:
    instruction = sent_instruction(ttl=60, group_id="g1")
    body = RecordDict()
    reply = Message(body, reply_to=instruction)
    assert reply.content is body
    assert reply.metadata == Metadata(
        run_id=7,
        message_id=None,
        src_node_id=5,
        dst_node_id=None,
        reply_to_message_id=42,
        group_id="g1",
        ttl=60.0,
        message_type="train",
        created_at=None,
    )
    # The instruction is not changed.
    assert instruction.metadata.dst_node_id == 5
    assert instruction.metadata.message_id == 42


def test_error_reply() -> None:
    err = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "ZeroDivisionError: boom")
    reply = Message(error=err, reply_to=sent_instruction())
    assert reply.has_error() and not reply.has_content()
    assert reply.error is err
    assert reply.metadata.src_node_id == 5
    assert reply.metadata.reply_to_message_id == 42
    with pytest.raises(ValueError, match="not content: ZeroDivisionError: boom"):
        _ = reply.content


def test_reply_needs_exactly_one_of_content_and_error() -> None:
    instruction = sent_instruction()
    with pytest.raises(TypeError, match="not both"):
        Message(content(), error=Error(0, "x"), reply_to=instruction)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"content .* or an error"):
        Message(reply_to=instruction)  # type: ignore[call-overload]


def test_reply_error_must_be_an_error() -> None:
    with pytest.raises(TypeError, match="Error"):
        Message(error="boom", reply_to=sent_instruction())  # type: ignore[call-overload]


@pytest.mark.parametrize(
    "kwargs",
    [{"ttl": 10.0}, {"group_id": "g"}],
)
def test_reply_takes_ttl_and_group_from_instruction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="from reply_to"):
        Message(content(), reply_to=sent_instruction(), **kwargs)


def test_reply_takes_destination_from_instruction() -> None:
    with pytest.raises(TypeError, match="from reply_to"):
        Message(content(), 3, reply_to=sent_instruction())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="from reply_to"):
        Message(content(), None, "train", reply_to=sent_instruction())  # type: ignore[call-overload]


def test_cannot_reply_to_a_reply() -> None:
    reply = Message(RecordDict(), reply_to=sent_instruction())
    with pytest.raises(ValueError, match="ServerApp"):
        Message(RecordDict(), reply_to=reply)


def test_reply_to_must_be_a_message() -> None:
    with pytest.raises(TypeError, match="reply_to must be a Message"):
        Message(content(), reply_to=42)  # type: ignore[call-overload]


# --- from_metadata / repr -----------------------------------------------------


def test_from_metadata_rebuilds_a_stored_message() -> None:
    md = Metadata(
        run_id=1,
        message_id=9,
        src_node_id=4,
        dst_node_id=None,
        reply_to_message_id=8,
        group_id="",
        ttl=10.0,
        message_type="evaluate",
        created_at=5.0,
    )
    msg = Message.from_metadata(md, error=Error(ErrorCode.MESSAGE_UNAVAILABLE, "expired"))
    assert msg.metadata is md
    assert msg.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    with pytest.raises(TypeError, match="not both"):
        Message.from_metadata(md, content=RecordDict(), error=Error(0, "x"))
    with pytest.raises(TypeError):
        Message.from_metadata(md)


def test_repr_names_type_route_and_content_keys() -> None:
    text = repr(sent_instruction())
    assert "type='train'" in text
    assert "dst=5" in text
    assert "['arrays', 'config']" in text
    err = repr(Message(error=Error(3, "gone"), reply_to=sent_instruction()))
    assert "gone" in err
