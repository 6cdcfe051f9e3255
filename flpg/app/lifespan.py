"""`@app.lifespan()`: code an app runs once before it serves and once after, as
Flower's ServerApp and ClientApp take it.

The registered function takes the `Context` and yields exactly once: what comes
before the `yield` runs before the app's first function call, what comes after
runs when the app is done (also when the app raised; the exception then goes on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flpg.app.context import Context

__all__ = ["LifespanFn", "lifespan_of", "no_lifespan"]

LifespanFn = Callable[[Context], Iterator[None]]


@contextmanager
def no_lifespan(_context: Context) -> Iterator[None]:
    """The lifespan of an app that registered none."""
    yield


def lifespan_of(fn: LifespanFn) -> Callable[[Context], Any]:
    """A context manager factory running `fn`'s code before and after its one
    `yield`; RuntimeError if `fn` does not yield, or yields more than once."""

    @contextmanager
    def lifespan(context: Context) -> Iterator[None]:
        steps = fn(context)
        if not isinstance(steps, Iterator):
            raise RuntimeError("the lifespan function must yield once (it is not a generator)")
        try:
            next(steps)
        except StopIteration:
            raise RuntimeError("the lifespan function must yield once; it did not yield") from None
        try:
            yield
        finally:
            try:
                next(steps)
            except StopIteration:
                pass
            else:
                raise RuntimeError("the lifespan function must yield only once")

    return lifespan
