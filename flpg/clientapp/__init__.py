"""The client side of a run, shaped like Flower's `flwr.clientapp`: ClientApp."""

from __future__ import annotations

from flpg.clientapp.clientapp import ClientApp

__all__ = ["ClientApp"]
