"""The replies of one phase as the strategy aggregates them: how many came, which
carried an error, which the strategy rejected and why."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from flpg.app.message import Message


class ReplyTally:
    """Wraps a reply stream and counts error replies and rejected replies.

    Iterating yields the replies that carry no error, one at a time as they arrive
    (nothing is held). A tally with a `parent` (a strategy given a plain list of a
    round's replies) passes each rejection on to it as well.
    """

    def __init__(self, replies: Iterable[Message], parent: ReplyTally | None = None) -> None:
        self._replies = replies
        self.parent = parent
        self.received = 0
        self.failures = 0
        self.reasons: list[str] = []
        self.rejected: list[tuple[str, str]] = []
        """`(reply message id, reason)` of replies the strategy could not use; the id
        as `metadata.message_id` gives it (str), which `Grid.reject_replies` takes."""

    def __iter__(self) -> Iterator[Message]:
        for reply in self._replies:
            self.received += 1
            if reply.has_error():
                self.fail(f"node {reply.metadata.src_node_id}: {reply.error.reason}")
                continue
            yield reply

    def fail(self, reason: str) -> None:
        """Count one failed reply and remember why."""
        self.failures += 1
        self.reasons.append(reason)

    def reject(self, reply: Message, reason: str) -> None:
        """Count a reply the strategy cannot use (its reason is stored on its row)."""
        self.fail(
            f"node {reply.metadata.src_node_id}: reply {reply.metadata.message_id} "
            f"rejected: {reason}"
        )
        if reply.metadata.message_id is not None:
            self.rejected.append((reply.metadata.message_id, reason))
        if self.parent is not None:
            self.parent.reject(reply, reason)

    @property
    def usable(self) -> int:
        """Replies received that carried no error and were not rejected."""
        return self.received - self.failures
