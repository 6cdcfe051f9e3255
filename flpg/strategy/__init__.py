"""Strategies: the server-side federated algorithms (FedAvg and friends)."""

from __future__ import annotations

from flpg.strategy.fedavg import FedAvg
from flpg.strategy.result import Result
from flpg.strategy.strategy import Strategy, TooFewReplies

__all__ = ["FedAvg", "Result", "Strategy", "TooFewReplies"]
