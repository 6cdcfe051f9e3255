"""ServerApp: one run's server logic (`@app.main()` receiving `(grid, context)`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from flpg.app.context import Context

if TYPE_CHECKING:
    from flpg.serverapp.grid import Grid

MainFn = Callable[["Grid", Context], None]


class ServerApp:
    """Holds the run's main function; flpg calls it once per run in its own process."""

    def __init__(self) -> None:
        self._main: MainFn | None = None

    def main(self) -> Callable[[MainFn], MainFn]:
        """Register the main function; exactly one per ServerApp."""

        def decorator(fn: MainFn) -> MainFn:
            if self._main is not None:
                raise ValueError("this ServerApp already has a main function")
            self._main = fn
            return fn

        return decorator

    def __call__(self, grid: Grid, context: Context) -> None:
        """Run the main function; raises RuntimeError if none was registered."""
        if self._main is None:
            raise RuntimeError("the ServerApp has no @app.main() function")
        self._main(grid, context)
