"""Messages between the ServerApp and ClientApps, shaped like Flower's Message API.

Storage-agnostic: a `Message` is plain data. The store assigns `run_id`,
`message_id` and `created_at` (by mutating `metadata`) when it is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

from flpg.app.records import RecordDict

__all__ = ["DEFAULT_TTL", "Error", "ErrorCode", "Message", "MessageType", "Metadata"]

DEFAULT_TTL = 3600.0
"""Seconds an instruction stays deliverable unless `ttl=` says otherwise."""


class MessageType:
    """The standard message types."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"


class ErrorCode:
    """Codes for `Error.code`."""

    UNKNOWN = 0
    CLIENT_APP_RAISED_EXCEPTION = 1
    MESSAGE_UNAVAILABLE = 2  # expired: its TTL passed before a reply arrived
    NODE_UNAVAILABLE = 3
    REPLY_REJECTED = 4
    RUN_STOPPED = 5


@dataclass(frozen=True)
class Error:
    """A reply that failed instead of carrying content."""

    code: int
    reason: str


@dataclass
class Metadata:
    """Routing data of a message.

    `src_node_id`/`dst_node_id` are None for the ServerApp. `run_id` is 0 and
    `message_id`/`created_at` are None until the message is sent. `ttl` is in
    seconds, `created_at` in epoch seconds.
    """

    run_id: int
    message_id: int | None
    src_node_id: int | None
    dst_node_id: int | None
    reply_to_message_id: int | None
    group_id: str
    ttl: float
    message_type: str
    created_at: float | None = None

    @property
    def expires_at(self) -> float | None:
        """`created_at + ttl`, or None if not sent yet."""
        return None if self.created_at is None else self.created_at + self.ttl


def _check_message_type(message_type: object) -> str:
    if not isinstance(message_type, str):
        raise TypeError(f"message_type must be a str, got {type(message_type).__name__}")
    if not message_type.strip():
        raise ValueError("message_type must be a non-empty string")
    return message_type


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return float(ttl)


class Message:
    """Either content (a `RecordDict`) or an `Error`, plus `Metadata`.

    Instruction from the ServerApp:
        `Message(content, dst_node_id, message_type, *, ttl=None, group_id="")`
    Reply to an instruction (copies run_id, group_id, message_type and ttl;
    src = the instruction's dst; dst = None, i.e. the ServerApp):
        `Message(content, reply_to=instruction)` or
        `Message(error=Error(...), reply_to=instruction)`
    Wrong argument combinations raise `TypeError`; bad values `ValueError`.
    """

    __slots__ = ("_content", "_error", "_metadata")

    _metadata: Metadata
    _content: RecordDict | None
    _error: Error | None

    @overload
    def __init__(
        self,
        content: RecordDict,
        dst_node_id: int,
        message_type: str,
        *,
        ttl: float | None = None,
        group_id: str = "",
    ) -> None: ...

    @overload
    def __init__(self, content: RecordDict, *, reply_to: Message) -> None: ...

    @overload
    def __init__(self, *, error: Error, reply_to: Message) -> None: ...

    def __init__(
        self,
        content: RecordDict | None = None,
        dst_node_id: int | None = None,
        message_type: str | None = None,
        *,
        ttl: float | None = None,
        group_id: str | None = None,
        error: Error | None = None,
        reply_to: Message | None = None,
    ) -> None:
        if isinstance(dst_node_id, Message):
            raise TypeError("to reply to a message, pass it as reply_to=")
        if reply_to is not None:
            metadata = self._reply_metadata(dst_node_id, message_type, ttl, group_id, reply_to)
        else:
            if error is not None:
                raise TypeError("only a reply can carry an error; pass reply_to=")
            metadata = self._instruction_metadata(dst_node_id, message_type, ttl, group_id)
        self._metadata = metadata
        self._content, self._error = _check_payload(content, error)

    @staticmethod
    def _instruction_metadata(
        dst_node_id: object, message_type: object, ttl: object, group_id: object
    ) -> Metadata:
        if dst_node_id is None or message_type is None:
            raise TypeError(
                "an instruction needs content, dst_node_id and message_type "
                "(or pass reply_to= to build a reply)"
            )
        if isinstance(dst_node_id, bool) or not isinstance(dst_node_id, int):
            raise TypeError(f"dst_node_id must be an int, got {type(dst_node_id).__name__}")
        if group_id is None:
            group_id = ""
        if not isinstance(group_id, str):
            raise TypeError(f"group_id must be a str, got {type(group_id).__name__}")
        return Metadata(
            run_id=0,
            message_id=None,
            src_node_id=None,
            dst_node_id=dst_node_id,
            reply_to_message_id=None,
            group_id=group_id,
            ttl=DEFAULT_TTL if ttl is None else _check_ttl(ttl),
            message_type=_check_message_type(message_type),
            created_at=None,
        )

    @staticmethod
    def _reply_metadata(
        dst_node_id: object,
        message_type: object,
        ttl: object,
        group_id: object,
        reply_to: object,
    ) -> Metadata:
        if not isinstance(reply_to, Message):
            raise TypeError(f"reply_to must be a Message, got {type(reply_to).__name__}")
        if dst_node_id is not None or message_type is not None:
            raise TypeError("a reply takes its destination and message type from reply_to")
        if ttl is not None or group_id is not None:
            raise TypeError("a reply takes its ttl and group_id from reply_to")
        instruction = reply_to.metadata
        if instruction.dst_node_id is None:
            raise ValueError("cannot reply to a message addressed to the ServerApp")
        return Metadata(
            run_id=instruction.run_id,
            message_id=None,
            src_node_id=instruction.dst_node_id,
            dst_node_id=None,
            reply_to_message_id=instruction.message_id,
            group_id=instruction.group_id,
            ttl=instruction.ttl,
            message_type=instruction.message_type,
            created_at=None,
        )

    @classmethod
    def from_metadata(
        cls,
        metadata: Metadata,
        *,
        content: RecordDict | None = None,
        error: Error | None = None,
    ) -> Message:
        """Rebuild a message with given metadata (used by stores); one of content/error."""
        if not isinstance(metadata, Metadata):
            raise TypeError(f"metadata must be Metadata, got {type(metadata).__name__}")
        message = cls.__new__(cls)
        message._metadata = metadata
        message._content, message._error = _check_payload(content, error)
        return message

    @property
    def metadata(self) -> Metadata:
        return self._metadata

    @property
    def content(self) -> RecordDict:
        """The content; `ValueError` if the message carries an error."""
        if self._content is None:
            assert self._error is not None
            raise ValueError(f"message carries an error, not content: {self._error.reason}")
        return self._content

    @property
    def error(self) -> Error:
        """The error; `ValueError` if the message carries content."""
        if self._error is None:
            raise ValueError("message carries content, not an error")
        return self._error

    def has_content(self) -> bool:
        return self._content is not None

    def has_error(self) -> bool:
        return self._error is not None

    def __repr__(self) -> str:
        md = self._metadata
        body = (
            f"content={list(self._content)!r}"
            if self._content is not None
            else f"error={self._error!r}"
        )
        return (
            f"Message(run_id={md.run_id}, message_id={md.message_id}, "
            f"type={md.message_type!r}, src={md.src_node_id}, dst={md.dst_node_id}, "
            f"reply_to={md.reply_to_message_id}, {body})"
        )


def _check_payload(content: object, error: object) -> tuple[RecordDict, None] | tuple[None, Error]:
    if content is not None and error is not None:
        raise TypeError("a message carries either content or an error, not both")
    if error is not None:
        if not isinstance(error, Error):
            raise TypeError(f"error must be an Error, got {type(error).__name__}")
        return None, error
    if content is None:
        raise TypeError("a message needs content (a RecordDict) or an error")
    if not isinstance(content, RecordDict):
        raise TypeError(f"content must be a RecordDict, got {type(content).__name__}")
    return content, None
