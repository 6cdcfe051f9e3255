"""Tests for flpg.app.message: the Message constructor rules and accessors."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
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
    _warned,
    error_code_from_stored,
    error_code_to_stored,
)
from flpg.app.records import ArrayRecord, ConfigRecord, RecordDict


def content() -> RecordDict:
    return RecordDict({"arrays": ArrayRecord([np.zeros(2)]), "config": ConfigRecord({"lr": 0.1})})


def sent_instruction(created_at: float | None = None, **kwargs: Any) -> Message:
    """An instruction as the store would have it after sending (just now by default)."""
    msg = Message(content(), 5, MessageType.TRAIN, **kwargs)
    msg.metadata.run_id = 7
    msg.metadata.message_id = "42"
    msg.metadata.created_at = time.time() if created_at is None else created_at
    return msg


def test_constants() -> None:
    assert (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY) == (
        "train",
        "evaluate",
        "query",
    )
    assert MessageType.SYSTEM == "system"
    # Flower's numbering (flwr.app.ErrorCode), flpg's own codes from 100 on.
    assert [
        ErrorCode.UNKNOWN,
        ErrorCode.LOAD_CLIENT_APP_EXCEPTION,
        ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        ErrorCode.MESSAGE_UNAVAILABLE,
        ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
        ErrorCode.NODE_UNAVAILABLE,
        ErrorCode.MOD_FAILED_PRECONDITION,
        ErrorCode.INVALID_FAB,
        ErrorCode.CLIENT_APP_CRASHED,
        ErrorCode.REPLY_REJECTED,
        ErrorCode.RUN_STOPPED,
    ] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 101]
    assert DEFAULT_TTL == 43200.0  # Flower's: 12 hours


def test_stored_error_codes_keep_the_meaning_of_rows_written_before() -> None:
    """The error_code column keeps flpg's first numbering (0..5); the mapping is a
    bijection, so every code an app may choose round-trips."""
    assert [
        error_code_to_stored(c)
        for c in (
            ErrorCode.UNKNOWN,
            ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
            ErrorCode.MESSAGE_UNAVAILABLE,
            ErrorCode.NODE_UNAVAILABLE,
            ErrorCode.REPLY_REJECTED,
            ErrorCode.RUN_STOPPED,
        )
    ] == [0, 1, 2, 3, 4, 5]
    codes = [*range(-3, 120), 4242]
    stored = [error_code_to_stored(c) for c in codes]
    assert len(set(stored)) == len(codes)
    assert [error_code_from_stored(x) for x in stored] == codes


def test_error_is_frozen_and_its_reason_optional() -> None:
    err = Error(code=ErrorCode.UNKNOWN, reason="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        err.code = 1  # type: ignore[misc]
    assert Error(ErrorCode.NODE_UNAVAILABLE).reason is None
    assert Error(3) == Error(3, None) != Error(3, "x")


# --- instructions -------------------------------------------------------------


def test_instruction_metadata() -> None:
    body = content()
    before = time.time()
    msg = Message(body, 5, MessageType.TRAIN)
    assert msg.content is body
    assert msg.has_content() and not msg.has_error()
    created = msg.metadata.created_at
    assert before <= created <= time.time()
    # Flower's positional order: created_at before ttl and message_type.
    assert msg.metadata == Metadata(0, None, None, 5, None, "", created, DEFAULT_TTL, "train")
    assert msg.metadata.delivered_at == ""
    assert msg.metadata.expires_at == created + DEFAULT_TTL
    assert Message(content=body, dst_node_id=5, message_type="train").content is body


def test_instruction_ttl_and_group_id() -> None:
    msg = Message(content(), 3, "query.custom", ttl=30, group_id="round-4")
    assert msg.metadata.ttl == 30.0
    assert type(msg.metadata.ttl) is float
    assert msg.metadata.group_id == "round-4"
    assert msg.metadata.message_type == "query.custom"
    msg.metadata.created_at = 100.0
    assert msg.metadata.expires_at == 130.0
    assert Message(content(), 3, "train", group_id=None).metadata.group_id == ""


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
    with pytest.raises(TypeError, match="at most 3"):
        Message(content(), 1, "train", 60)  # type: ignore[call-overload]
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
    with pytest.raises(TypeError, match="reply"):
        Message(Error(0), 1, "train")  # type: ignore[call-overload]


def test_message_passed_positionally_hints_at_reply_to() -> None:
    with pytest.raises(TypeError, match="reply_to="):
        Message(content(), sent_instruction())  # type: ignore[call-overload]


# --- replies ------------------------------------------------------------------


def test_content_reply_copies_routing_from_the_instruction() -> None:
    instruction = sent_instruction(ttl=60, group_id="g1")
    body = RecordDict()
    reply = Message(body, reply_to=instruction)
    assert reply.content is body
    md = reply.metadata
    assert (md.run_id, md.message_id, md.src_node_id, md.dst_node_id) == (7, None, 5, None)
    assert (md.reply_to_message_id, md.group_id, md.message_type) == ("42", "g1", "train")
    # As in Flower: the reply lives as long as its instruction has left.
    assert md.created_at >= instruction.metadata.created_at
    assert md.expires_at == pytest.approx(instruction.metadata.expires_at)
    # The instruction is not changed.
    assert instruction.metadata.dst_node_id == 5
    assert instruction.metadata.message_id == "42"


def test_reply_ttl_is_capped_at_what_the_instruction_has_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    instruction = sent_instruction(ttl=60)
    assert Message(RecordDict(), reply_to=instruction, ttl=10).metadata.ttl == 10.0
    with caplog.at_level(logging.WARNING, logger="flpg.app"):
        long = Message(RecordDict(), reply_to=instruction, ttl=600)
    assert long.metadata.ttl == pytest.approx(60, abs=1)
    assert "exceeds" in caplog.text
    with pytest.raises(ValueError, match="ttl"):
        Message(RecordDict(), reply_to=instruction, ttl=0)


def test_error_reply_positional_and_by_keyword() -> None:
    err = Error(ErrorCode.NODE_UNAVAILABLE)
    reply = Message(err, reply_to=sent_instruction())
    assert reply.error is err and reply.metadata.reply_to_message_id == "42"


def test_deprecated_reply_builders_still_work(caplog: pytest.LogCaptureFixture) -> None:
    instruction = sent_instruction(ttl=60)
    with caplog.at_level(logging.WARNING, logger="flpg.app"):
        reply = instruction.create_reply(RecordDict(), ttl=5)
        failed = instruction.create_error_reply(Error(ErrorCode.UNKNOWN, "x"))
    assert reply.metadata.ttl == 5.0 and reply.metadata.reply_to_message_id == "42"
    assert failed.error == Error(0, "x")
    assert "deprecated" in caplog.text or {"create_reply", "create_error_reply"} <= _warned


def test_content_and_error_setters() -> None:
    msg = Message(content(), 1, "train")
    other = RecordDict()
    msg.content = other
    assert msg.content is other
    with pytest.raises(ValueError, match="cannot carry an error"):
        msg.error = Error(0)
    with pytest.raises(TypeError, match="RecordDict"):
        msg.content = {}  # type: ignore[assignment]
    failed = Message(Error(2, "boom"), reply_to=sent_instruction())
    failed.error = Error(3)
    assert failed.error == Error(3)
    with pytest.raises(ValueError, match="cannot have content"):
        failed.content = RecordDict()


def test_error_reply() -> None:
    err = Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "ZeroDivisionError: boom")
    reply = Message(error=err, reply_to=sent_instruction())
    assert reply.has_error() and not reply.has_content()
    assert reply.error is err
    assert reply.metadata.src_node_id == 5
    assert reply.metadata.reply_to_message_id == "42"
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


def test_reply_takes_group_from_instruction() -> None:
    with pytest.raises(TypeError, match="from reply_to"):
        Message(content(), reply_to=sent_instruction(), group_id="g")  # type: ignore[call-overload]


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
        message_id="9",
        src_node_id=4,
        dst_node_id=None,
        reply_to_message_id="8",
        group_id="",
        created_at=5.0,
        ttl=10.0,
        message_type="evaluate",
    )
    msg = Message.from_metadata(md, error=Error(ErrorCode.MESSAGE_UNAVAILABLE, "expired"))
    assert msg.metadata is md
    assert msg.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    with pytest.raises(TypeError, match="not both"):
        Message.from_metadata(md, content=RecordDict(), error=Error(0, "x"))
    with pytest.raises(TypeError):
        Message.from_metadata(md)
    assert Message(RecordDict(), metadata=md).metadata is md
    with pytest.raises(TypeError, match="metadata"):
        Message(RecordDict(), 3, metadata=md)  # type: ignore[call-overload]


def test_repr_names_type_route_and_content_keys() -> None:
    text = repr(sent_instruction())
    assert "type='train'" in text
    assert "dst=5" in text
    assert "['arrays', 'config']" in text
    err = repr(Message(error=Error(3, "gone"), reply_to=sent_instruction()))
    assert "gone" in err


def test_message_ids_are_str_as_flower_types_them() -> None:
    """The store's integer ids are carried as their decimal str, set or built."""
    msg = Message(content(), 5, MessageType.TRAIN)
    assert msg.metadata.message_id is None and msg.metadata.reply_to_message_id is None
    msg.metadata.message_id = 17  # type: ignore[assignment]  # what the store assigns
    assert msg.metadata.message_id == "17"
    reply = Message(RecordDict(), reply_to=msg)
    assert reply.metadata.reply_to_message_id == "17"
    md = dataclasses.replace(msg.metadata, message_id=3)  # type: ignore[arg-type]
    assert md.message_id == "3"
    with pytest.raises(TypeError, match="message_id must be a str, got float"):
        msg.metadata.message_id = 1.5  # type: ignore[assignment]
    with pytest.raises(TypeError, match="reply_to_message_id must be a str, got bool"):
        msg.metadata.reply_to_message_id = True  # type: ignore[assignment]
