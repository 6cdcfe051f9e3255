"""Messages between the ServerApp and ClientApps, shaped like Flower's Message API.

Storage-agnostic: a `Message` is plain data. The store assigns `run_id`,
`message_id` and `created_at` (by mutating `metadata`) when it is sent.
Flower's forms are accepted as Flower takes them (`Message(content, dst, type)`,
`Message(content_or_error, reply_to=msg, ttl=...)`, `msg.create_reply(...)`).
A message type is Flower's: `train`, `evaluate`, `query` or `system`, optionally
with `.<action>` (a Python identifier); a message built by an app with any other
type is refused with one line (`check_message_type`). Stored messages are rebuilt
as stored (`from_metadata`); a ClientApp refuses a bad type it is handed.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, overload

from flpg.app.error import Error, ErrorCode, error_code_from_stored, error_code_to_stored
from flpg.app.metadata import Metadata, message_id_str
from flpg.app.records import RecordDict

__all__ = [
    "DEFAULT_TTL",
    "MESSAGE_TTL_TOLERANCE",
    "MESSAGE_TYPE_FORMS",
    "Error",
    "ErrorCode",
    "Message",
    "MessageType",
    "Metadata",
    "check_message_type",
    "error_code_from_stored",
    "error_code_to_stored",
    "is_valid_message_type",
    "message_id_str",
]

DEFAULT_TTL = 43200.0
"""Seconds an instruction stays deliverable unless `ttl=` says otherwise (Flower's
`DEFAULT_TTL`, 12 hours)."""

MESSAGE_TTL_TOLERANCE = 0.1
"""Seconds a reply's `ttl=` may exceed what its instruction has left before it is cut."""

_log = logging.getLogger("flpg.app")


class MessageType:
    """The standard message types (Flower's `flwr.app.MessageType`)."""

    TRAIN = "train"
    EVALUATE = "evaluate"
    QUERY = "query"
    SYSTEM = "system"


MESSAGE_TYPE_FORMS = (
    "'<category>' or '<category>.<action>', where <category> is 'train', 'evaluate', "
    "'query' or 'system' and <action> is a Python identifier"
)
"""The message types Flower accepts (its `validate_message_type`), in words."""

_CATEGORIES = frozenset(
    (MessageType.TRAIN, MessageType.EVALUATE, MessageType.QUERY, MessageType.SYSTEM)
)


def is_valid_message_type(message_type: str) -> bool:
    """Whether `message_type` has one of Flower's forms (MESSAGE_TYPE_FORMS)."""
    category, dot, action = message_type.partition(".")
    return category in _CATEGORIES and (not dot or action.isidentifier())


def check_message_type(message_type: object) -> str:
    """`message_type` if it has one of Flower's forms; TypeError for a non-str,
    ValueError (one line, naming the valid forms) for any other string."""
    if not isinstance(message_type, str):
        raise TypeError(f"message_type must be a str, got {type(message_type).__name__}")
    if not is_valid_message_type(message_type):
        raise ValueError(f"invalid message_type {message_type!r}: expected {MESSAGE_TYPE_FORMS}")
    return message_type


def _check_ttl(ttl: object) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise TypeError(f"ttl must be a number of seconds, got {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be a positive, finite number of seconds, got {ttl!r}")
    return float(ttl)


def _split_positional(
    args: tuple[Any, ...], content: object, error: object, dst: object, mtype: object
) -> tuple[object, object, object, object]:
    """Flower's positional forms: `(content_or_error, dst_node_id, message_type)`."""
    if len(args) > 3:
        raise TypeError(f"Message takes at most 3 positional arguments, got {len(args)}")
    if len(args) > 1:
        if dst is not None:
            raise TypeError("dst_node_id given both positionally and by keyword")
        dst = args[1]
    if len(args) > 2:
        if mtype is not None:
            raise TypeError("message_type given both positionally and by keyword")
        mtype = args[2]
    if args and args[0] is not None:
        if content is not None or error is not None:
            raise TypeError("a message carries either content or an error, not both")
        if isinstance(args[0], Error):
            error = args[0]
        else:
            content = args[0]
    return content, error, dst, mtype


class Message:
    """Either content (a `RecordDict`) or an `Error`, plus `Metadata`.

    Instruction from the ServerApp:
        `Message(content, dst_node_id, message_type, *, ttl=None, group_id=None)`
    Reply to an instruction (run_id, group_id and message_type from it; src = its
    dst; dst = None, i.e. the ServerApp; `ttl` at most the time it has left):
        `Message(content, reply_to=instruction, ttl=None)` or
        `Message(Error(...), reply_to=instruction)` (also `error=`)
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
        group_id: str | None = None,
    ) -> None: ...

    @overload
    def __init__(
        self, content: RecordDict, *, reply_to: Message, ttl: float | None = None
    ) -> None: ...

    @overload
    def __init__(self, error: Error, *, reply_to: Message, ttl: float | None = None) -> None: ...

    @overload
    def __init__(self, *, error: Error, reply_to: Message, ttl: float | None = None) -> None: ...

    @overload
    def __init__(self, content_or_error: RecordDict | Error, /, *, metadata: Metadata) -> None: ...

    def __init__(
        self,
        *args: Any,
        dst_node_id: int | None = None,
        message_type: str | None = None,
        content: RecordDict | None = None,
        error: Error | None = None,
        ttl: float | None = None,
        group_id: str | None = None,
        reply_to: Message | None = None,
        metadata: Metadata | None = None,
    ) -> None:
        body, err, dst, mtype = _split_positional(args, content, error, dst_node_id, message_type)
        if isinstance(dst, Message):
            raise TypeError("to reply to a message, pass it as reply_to=")
        if metadata is not None:
            if any(x is not None for x in (dst, mtype, ttl, group_id, reply_to)):
                raise TypeError("Message(metadata=...) takes only content or an error beside it")
            if not isinstance(metadata, Metadata):
                raise TypeError(f"metadata must be Metadata, got {type(metadata).__name__}")
            check_message_type(metadata.message_type)
        elif reply_to is not None:
            metadata = _reply_metadata(dst, mtype, ttl, group_id, reply_to)
        else:
            if err is not None:
                raise TypeError("only a reply can carry an error; pass reply_to=")
            metadata = _instruction_metadata(dst, mtype, ttl, group_id)
        self._metadata = metadata
        self._content, self._error = _check_payload(body, err)

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

    @content.setter
    def content(self, value: RecordDict) -> None:
        """Replace the content; `ValueError` if the message carries an error."""
        if self._error is not None:
            raise ValueError("a message that carries an error cannot have content")
        self._content = _check_payload(value, None)[0]

    @property
    def error(self) -> Error:
        """The error; `ValueError` if the message carries content."""
        if self._error is None:
            raise ValueError("message carries content, not an error")
        return self._error

    @error.setter
    def error(self, value: Error) -> None:
        """Set the error; `ValueError` if the message carries content."""
        if self._content is not None:
            raise ValueError("a message that carries content cannot carry an error")
        self._error = _check_payload(None, value)[1]

    def has_content(self) -> bool:
        return self._content is not None

    def has_error(self) -> bool:
        return self._error is not None

    def create_reply(self, content: RecordDict, ttl: float | None = None) -> Message:
        """Deprecated (as in Flower): `Message(content, reply_to=self, ttl=ttl)`."""
        _deprecated("create_reply", "Message(content, reply_to=msg, ttl=...)")
        return Message(content, reply_to=self, ttl=ttl)

    def create_error_reply(self, error: Error, ttl: float | None = None) -> Message:
        """Deprecated (as in Flower): `Message(error, reply_to=self, ttl=ttl)`."""
        _deprecated("create_error_reply", "Message(error, reply_to=msg, ttl=...)")
        return Message(error, reply_to=self, ttl=ttl)

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


_warned: set[str] = set()


def _deprecated(name: str, instead: str) -> None:
    """Log once per process that `Message.<name>` is deprecated, as Flower does."""
    if name not in _warned:
        _warned.add(name)
        _log.warning("`Message.%s` is deprecated; use `%s` instead.", name, instead)


def _instruction_metadata(dst: object, mtype: object, ttl: object, group_id: object) -> Metadata:
    if dst is None or mtype is None:
        raise TypeError(
            "an instruction needs content, dst_node_id and message_type "
            "(or pass reply_to= to build a reply)"
        )
    if isinstance(dst, bool) or not isinstance(dst, int):
        raise TypeError(f"dst_node_id must be an int, got {type(dst).__name__}")
    if group_id is None:
        group_id = ""
    if not isinstance(group_id, str):
        raise TypeError(f"group_id must be a str, got {type(group_id).__name__}")
    return Metadata(
        run_id=0,
        message_id=None,
        src_node_id=None,
        dst_node_id=dst,
        reply_to_message_id=None,
        group_id=group_id,
        created_at=time.time(),
        ttl=DEFAULT_TTL if ttl is None else _check_ttl(ttl),
        message_type=check_message_type(mtype),
    )


def _reply_metadata(
    dst: object, mtype: object, ttl: object, group_id: object, reply_to: object
) -> Metadata:
    if not isinstance(reply_to, Message):
        raise TypeError(f"reply_to must be a Message, got {type(reply_to).__name__}")
    if dst is not None or mtype is not None:
        raise TypeError("a reply takes its destination and message type from reply_to")
    if group_id is not None:
        raise TypeError("a reply takes its group_id from reply_to")
    instruction = reply_to.metadata
    if instruction.dst_node_id is None:
        raise ValueError("cannot reply to a message addressed to the ServerApp")
    now = time.time()
    return Metadata(
        run_id=instruction.run_id,
        message_id=None,
        src_node_id=instruction.dst_node_id,
        dst_node_id=None,
        reply_to_message_id=instruction.message_id,
        group_id=instruction.group_id,
        created_at=now,
        ttl=_reply_ttl(None if ttl is None else _check_ttl(ttl), instruction, now),
        message_type=instruction.message_type,
    )


def _reply_ttl(ttl: float | None, instruction: Metadata, now: float) -> float:
    """The reply's TTL: what the instruction has left, or `ttl` if that is no more
    (a larger one is cut to it, with a warning, as Flower does)."""
    left = instruction.created_at + instruction.ttl - now
    if ttl is None:
        return left
    if ttl - left > MESSAGE_TTL_TOLERANCE:
        _log.warning(
            "The reply TTL of %.2f seconds exceeds the %.2f seconds its message has left; "
            "using %.2f",
            ttl,
            left,
            left,
        )
        return left
    return ttl


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
