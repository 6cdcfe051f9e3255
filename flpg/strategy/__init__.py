"""`flpg.strategy`: the same strategies as `flpg.serverapp.strategy` (the path Flower uses)."""

from __future__ import annotations

from flpg.serverapp.strategy import FedAvg, Result, Strategy, TooFewReplies

__all__ = ["FedAvg", "Result", "Strategy", "TooFewReplies"]
