"""Nested and dotted config keys, as Flower's `flwr.common.config` converts them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["flatten_dict", "unflatten_dict"]


def flatten_dict(raw: Mapping[str, Any] | None, parent_key: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted keys: `{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        name = f"{parent_key}.{key}" if parent_key else key
        if isinstance(value, Mapping):
            flat.update(flatten_dict(value, name))
        else:
            flat[name] = value
    return flat


def unflatten_dict(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as nested dicts: `{"a.b": 1}` -> `{"a": {"b": 1}}`."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        level = nested
        for part in parents:
            level = level.setdefault(part, {})
        level[last] = value
    return nested
