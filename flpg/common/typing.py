"""Type names shaped like Flower's `flwr.common.typing` (the ones apps use)."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy.typing as npt

from flpg.app.user_config import UserConfig, UserConfigValue

__all__ = [
    "Config",
    "Metrics",
    "NDArray",
    "NDArrays",
    "Properties",
    "Scalar",
    "UserConfig",
    "UserConfigValue",
]

NDArray: TypeAlias = npt.NDArray[Any]
NDArrays: TypeAlias = list[NDArray]
Scalar: TypeAlias = bool | bytes | float | int | str
Metrics: TypeAlias = dict[str, Scalar]
Config: TypeAlias = dict[str, Scalar]
Properties: TypeAlias = dict[str, Scalar]
