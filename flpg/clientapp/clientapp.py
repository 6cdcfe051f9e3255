"""ClientApp: a run's client logic on a node (`@app.train()`, `@app.evaluate()`,
`@app.query()`, `@app.lifespan()`), as Flower's `flwr.clientapp.ClientApp`."""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from flpg.app.context import Context
from flpg.app.lifespan import LifespanFn, lifespan_of
from flpg.app.message import Message, MessageType, check_message_type

Handler = Callable[[Message, Context], Message]
Mod = Callable[[Message, Context, Handler], Message]
"""Flower's mod: `(message, context, call_next) -> reply`."""

DEFAULT_ACTION = "default"


def _with_mods(handler: Handler, mods: list[Mod]) -> Handler:
    """`handler` wrapped in `mods`, the first one outermost (as Flower chains them)."""
    for mod in reversed(mods):

        def wrapped(
            message: Message, context: Context, _mod: Mod = mod, _next: Handler = handler
        ) -> Message:
            return _mod(message, context, _next)

        handler = wrapped
    return handler


class ClientApp:
    """Maps message types to handlers; a handler turns a message into its reply.

    `@app.train()` handles `train`; `@app.train("fedprox")` handles `train.fedprox`.
    `mods=` (of the app, then of the function) wrap a handler as in Flower.
    A `@app.lifespan()` runs once per Context in the app's process: its setup before
    the first message of that Context is handled, its teardown at `close()`.
    Flower's legacy `client_fn` is refused with one line.
    """

    def __init__(self, client_fn: Any = None, mods: list[Mod] | None = None) -> None:
        if client_fn is not None:
            raise TypeError(
                "ClientApp(client_fn=...) is Flower's legacy Client API, which flpg does "
                "not support; register functions with @app.train(), @app.evaluate(), @app.query()"
            )
        self._mods: list[Mod] = list(mods or [])
        self._handlers: dict[str, Handler] = {}
        self._lifespan: Callable[[Context], Any] | None = None
        self._lock = threading.Lock()
        self._started: dict[int, tuple[Context, ExitStack]] = {}

    def _register(
        self, base: str, action: str | None, mods: list[Mod] | None
    ) -> Callable[[Handler], Handler]:
        action = action or DEFAULT_ACTION
        if not action.isidentifier():
            raise ValueError(f"{base} action {action!r} must be a Python identifier")
        message_type = base if action == DEFAULT_ACTION else f"{base}.{action}"

        def decorator(fn: Handler) -> Handler:
            if message_type in self._handlers:
                raise ValueError(f"a handler for {message_type!r} is already registered")
            self._handlers[message_type] = _with_mods(fn, self._mods + list(mods or []))
            return fn

        return decorator

    def train(
        self, action: str = DEFAULT_ACTION, *, mods: list[Mod] | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the handler of `train` (or `train.<action>`) messages."""
        return self._register(MessageType.TRAIN, action, mods)

    def evaluate(
        self, action: str = DEFAULT_ACTION, *, mods: list[Mod] | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the handler of `evaluate` (or `evaluate.<action>`) messages."""
        return self._register(MessageType.EVALUATE, action, mods)

    def query(
        self, action: str = DEFAULT_ACTION, *, mods: list[Mod] | None = None
    ) -> Callable[[Handler], Handler]:
        """Register the handler of `query` (or `query.<action>`) messages."""
        return self._register(MessageType.QUERY, action, mods)

    def lifespan(self) -> Callable[[LifespanFn], LifespanFn]:
        """Register a generator function `(context)` that yields once (see the class);
        returns it unchanged."""

        def decorator(fn: LifespanFn) -> LifespanFn:
            self._lifespan = lifespan_of(fn)
            return fn

        return decorator

    @property
    def message_types(self) -> list[str]:
        """The message types this app handles."""
        return sorted(self._handlers)

    def _start(self, context: Context) -> None:
        """Run the lifespan's setup for `context` unless it ran; a setup that raises
        is tried again with the next message."""
        if self._lifespan is None:
            return
        with self._lock:
            if id(context) in self._started:
                return
            stack = ExitStack()
            stack.enter_context(self._lifespan(context))
            self._started[id(context)] = (context, stack)

    def close(self) -> None:
        """Run the lifespans' teardowns, newest first (each once; the first error
        raised after all ran). Later messages would start them again."""
        with self._lock:
            started = list(self._started.values())
            self._started.clear()
        first: BaseException | None = None
        for _context, stack in reversed(started):
            try:
                stack.close()
            except BaseException as exc:
                first = first or exc
        if first is not None:
            raise first

    def __call__(self, message: Message, context: Context) -> Message:
        """Run the handler for `message`; raises ValueError if its type is not one of
        Flower's forms, LookupError if no handler has it, TypeError if the handler
        does not return a reply Message."""
        message_type = check_message_type(message.metadata.message_type)
        handler = self._handlers.get(message_type.removesuffix(f".{DEFAULT_ACTION}"))
        if handler is None:
            raise LookupError(
                f"this ClientApp has no handler for message type {message_type!r} "
                f"(it handles: {', '.join(self.message_types) or 'nothing'})"
            )
        self._start(context)
        reply = handler(message, context)
        if not isinstance(reply, Message):
            raise TypeError(
                f"the {message_type} handler returned {type(reply).__name__}, expected a Message "
                "(build it with Message(content, reply_to=msg))"
            )
        return reply
