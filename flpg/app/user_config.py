"""The run and node configuration types under Flower's names (`flwr.app.user_config`)."""

from __future__ import annotations

from typing import TypeAlias

__all__ = ["UserConfig", "UserConfigValue"]

UserConfigValue: TypeAlias = bool | float | int | str
UserConfig: TypeAlias = dict[str, UserConfigValue]
"""`Context.run_config` and `Context.node_config`: flat keys (`a.b`) to TOML scalars."""
