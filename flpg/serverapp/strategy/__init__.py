"""Strategies: the server-side federated algorithms (FedAvg and friends)."""

from __future__ import annotations

from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.strategy import Strategy, TooFewReplies

__all__ = ["FedAvg", "Result", "Strategy", "TooFewReplies"]
