"""`Error` and `ErrorCode` (Flower's `flwr.app.Error` and `ErrorCode`), and the
numbering the `messages.error_code` column keeps."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Error", "ErrorCode", "error_code_from_stored", "error_code_to_stored"]


class ErrorCode:
    """Codes for `Error.code`, numbered as Flower's (`flwr.app.ErrorCode`), plus
    flpg's own from 100 on (numbers Flower does not use)."""

    UNKNOWN = 0
    LOAD_CLIENT_APP_EXCEPTION = 1
    CLIENT_APP_RAISED_EXCEPTION = 2
    MESSAGE_UNAVAILABLE = 3  # expired: its TTL passed before a reply arrived
    REPLY_MESSAGE_UNAVAILABLE = 4
    NODE_UNAVAILABLE = 5
    MOD_FAILED_PRECONDITION = 6
    INVALID_FAB = 7
    CLIENT_APP_CRASHED = 8
    REPLY_REJECTED = 100  # flpg: the strategy left the reply out of its round
    RUN_STOPPED = 101  # flpg: the run was stopped before the message was answered


# The `messages.error_code` column keeps flpg's first numbering, so rows written
# before Flower's numbering keep their meaning: stored 1 is CLIENT_APP_RAISED_EXCEPTION,
# 2 MESSAGE_UNAVAILABLE, 3 NODE_UNAVAILABLE, 4 REPLY_REJECTED, 5 RUN_STOPPED. Flower
# codes whose numbers those take are stored elsewhere; every other code as itself.
_TO_STORED: dict[int, int] = {
    ErrorCode.UNKNOWN: 0,
    ErrorCode.CLIENT_APP_RAISED_EXCEPTION: 1,
    ErrorCode.MESSAGE_UNAVAILABLE: 2,
    ErrorCode.NODE_UNAVAILABLE: 3,
    ErrorCode.REPLY_REJECTED: 4,
    ErrorCode.RUN_STOPPED: 5,
    ErrorCode.LOAD_CLIENT_APP_EXCEPTION: 100,
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: 101,
}
_FROM_STORED: dict[int, int] = {stored: code for code, stored in _TO_STORED.items()}
assert len(_FROM_STORED) == len(_TO_STORED) and set(_FROM_STORED) == set(_TO_STORED)


def error_code_to_stored(code: int) -> int:
    """`Error.code` as the `messages.error_code` column holds it (a bijection)."""
    return _TO_STORED.get(code, code)


def error_code_from_stored(stored: int) -> int:
    """A `messages.error_code` value as the `Error.code` apps see."""
    return _FROM_STORED.get(stored, stored)


@dataclass(frozen=True)
class Error:
    """A reply that failed instead of carrying content: `Error(code, reason=None)`."""

    code: int
    reason: str | None = None
