"""Routing data of a message (`Metadata`), shaped like Flower's `flwr.app.metadata`."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Metadata", "message_id_str"]


def message_id_str(value: object, what: str = "message_id") -> str | None:
    """A message id as Flower types it: the stored row's integer id as a decimal str.

    Accepts the store's int (or a str, kept as given) and None (not stored yet);
    anything else raises TypeError naming `what`.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{what} must be a str, got {type(value).__name__}")


_ID_FIELDS = frozenset(("message_id", "reply_to_message_id"))


@dataclass
class Metadata:
    """Routing data of a message, with Flower's fields in Flower's order.

    `src_node_id`/`dst_node_id` are None for the ServerApp (flpg's node ids start
    at 1, so no number is set aside for it). `message_id` and `reply_to_message_id`
    are str, as Flower types them: the database's integer id in decimal (an int
    given or assigned is stored as its str). `message_id` is None until the message
    is stored (Flower's ""), `reply_to_message_id` None for an instruction.
    `created_at` is epoch seconds (the database's clock once sent), `ttl` seconds;
    `delivered_at` is kept for Flower's sake and stays "".
    """

    run_id: int
    message_id: str | None
    src_node_id: int | None
    dst_node_id: int | None
    reply_to_message_id: str | None
    group_id: str
    created_at: float
    ttl: float
    message_type: str
    delivered_at: str = field(default="", compare=False)

    def __setattr__(self, name: str, value: object) -> None:
        if name in _ID_FIELDS:
            value = message_id_str(value, name)
        object.__setattr__(self, name, value)

    @property
    def expires_at(self) -> float:
        """`created_at + ttl`."""
        return self.created_at + self.ttl
