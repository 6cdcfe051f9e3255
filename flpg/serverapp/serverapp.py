"""ServerApp: one run's server logic (`@app.main()` receiving `(grid, context)`,
`@app.lifespan()` around it), as Flower's `flwr.serverapp.ServerApp`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flpg.app.context import Context
from flpg.app.lifespan import LifespanFn, lifespan_of, no_lifespan

if TYPE_CHECKING:
    from flpg.serverapp.grid import Grid

MainFn = Callable[["Grid", Context], None]

_LEGACY = (
    "ServerApp({}=...) is Flower's legacy API (strategies of flwr.server), which flpg "
    "does not support; register a main function with @app.main()"
)


class ServerApp:
    """Holds the run's main function; flpg calls it once per run in its own process.

    Flower's legacy arguments (`server`, `config`, `strategy`, `client_manager`,
    `server_fn`) are named so that an app using them fails with one clear line.
    """

    def __init__(
        self,
        server: Any = None,
        config: Any = None,
        strategy: Any = None,
        client_manager: Any = None,
        server_fn: Any = None,
    ) -> None:
        legacy = {
            "server": server,
            "config": config,
            "strategy": strategy,
            "client_manager": client_manager,
            "server_fn": server_fn,
        }
        for name, value in legacy.items():
            if value is not None:
                raise TypeError(_LEGACY.format(name))
        self._main: MainFn | None = None
        self._lifespan: Callable[[Context], Any] = no_lifespan

    def main(self) -> Callable[[MainFn], MainFn]:
        """Register the main function; exactly one per ServerApp."""

        def decorator(fn: MainFn) -> MainFn:
            if self._main is not None:
                raise ValueError("this ServerApp already has a main function")
            self._main = fn
            return fn

        return decorator

    def lifespan(self) -> Callable[[LifespanFn], LifespanFn]:
        """Register a generator function `(context)` that yields once: its code before
        the `yield` runs before the main function, the rest after it (also when the
        main function raised). Returns the function unchanged."""

        def decorator(fn: LifespanFn) -> LifespanFn:
            self._lifespan = lifespan_of(fn)
            return fn

        return decorator

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the main function within the lifespan; RuntimeError if none was registered."""
        if self._main is None:
            raise RuntimeError("the ServerApp has no @app.main() function")
        with self._lifespan(context):
            self._main(grid, context)
