"""The server side of a run, shaped like Flower's `flwr.serverapp`: ServerApp, Grid, strategies."""

from __future__ import annotations

from flpg.serverapp.grid import Grid
from flpg.serverapp.serverapp import ServerApp

__all__ = ["Grid", "ServerApp"]
