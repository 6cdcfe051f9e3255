"""The constants apps import from Flower's `flwr.common.constant`."""

from __future__ import annotations

from flpg.app.message import DEFAULT_TTL, MESSAGE_TTL_TOLERANCE, ErrorCode, MessageType

__all__ = ["DEFAULT_TTL", "MESSAGE_TTL_TOLERANCE", "ErrorCode", "MessageType"]
