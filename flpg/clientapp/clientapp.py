"""ClientApp: a run's client logic on a node (`@app.train()`, `@app.evaluate()`, `@app.query()`)."""

from __future__ import annotations

from collections.abc import Callable

from flpg.app.context import Context
from flpg.app.message import Message, MessageType

Handler = Callable[[Message, Context], Message]


class ClientApp:
    """Maps message types to handlers; a handler turns a message into its reply.

    `@app.train()` handles `train`; `@app.train("fedprox")` handles `train.fedprox`.
    """

    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def _register(self, base: str, action: str | None) -> Callable[[Handler], Handler]:
        message_type = f"{base}.{action}" if action else base

        def decorator(fn: Handler) -> Handler:
            if message_type in self._handlers:
                raise ValueError(f"a handler for {message_type!r} is already registered")
            self._handlers[message_type] = fn
            return fn

        return decorator

    def train(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of `train` (or `train.<action>`) messages."""
        return self._register(MessageType.TRAIN, action)

    def evaluate(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of `evaluate` (or `evaluate.<action>`) messages."""
        return self._register(MessageType.EVALUATE, action)

    def query(self, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the handler of `query` (or `query.<action>`) messages."""
        return self._register(MessageType.QUERY, action)

    @property
    def message_types(self) -> list[str]:
        """The message types this app handles."""
        return sorted(self._handlers)

    def __call__(self, message: Message, context: Context) -> Message:
        """Run the handler for `message`; raises LookupError if there is none,
        TypeError if the handler does not return a reply Message."""
        message_type = message.metadata.message_type
        handler = self._handlers.get(message_type)
        if handler is None:
            raise LookupError(
                f"this ClientApp has no handler for message type {message_type!r} "
                f"(it handles: {', '.join(self.message_types) or 'nothing'})"
            )
        reply = handler(message, context)
        if not isinstance(reply, Message):
            raise TypeError(
                f"the {message_type} handler returned {type(reply).__name__}, expected a Message "
                "(build it with Message(content, reply_to=msg))"
            )
        return reply
