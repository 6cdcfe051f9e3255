"""Mods (Flower's `flwr.clientapp.mod`): none are provided yet; the package exists so
that a mod an app imports is named as unsupported rather than as a missing module."""

from __future__ import annotations

__all__: list[str] = []
