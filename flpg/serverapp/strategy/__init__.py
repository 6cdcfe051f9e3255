"""Strategies: the server-side federated algorithms (Flower's, with flpg's streaming and
chunk-wise aggregation)."""

from __future__ import annotations

from flpg.serverapp.strategy.bulyan import Bulyan
from flpg.serverapp.strategy.dp_adaptive_clipping import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
)
from flpg.serverapp.strategy.dp_fixed_clipping import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)
from flpg.serverapp.strategy.fedadagrad import FedAdagrad
from flpg.serverapp.strategy.fedadam import FedAdam
from flpg.serverapp.strategy.fedavg import FedAvg
from flpg.serverapp.strategy.fedavgm import FedAvgM
from flpg.serverapp.strategy.fedbuff import FedBuff
from flpg.serverapp.strategy.fedmedian import FedMedian
from flpg.serverapp.strategy.fedopt import FedOpt
from flpg.serverapp.strategy.fedprox import FedProx
from flpg.serverapp.strategy.fedtrimmedavg import FedTrimmedAvg
from flpg.serverapp.strategy.fedxgb_bagging import FedXgbBagging
from flpg.serverapp.strategy.fedxgb_cyclic import FedXgbCyclic
from flpg.serverapp.strategy.fedyogi import FedYogi
from flpg.serverapp.strategy.krum import Krum
from flpg.serverapp.strategy.multikrum import MultiKrum
from flpg.serverapp.strategy.qfedavg import QFedAvg
from flpg.serverapp.strategy.result import Result
from flpg.serverapp.strategy.state import StrategyState
from flpg.serverapp.strategy.strategy import Strategy, TooFewReplies

__all__ = [
    "Bulyan",
    "DifferentialPrivacyClientSideAdaptiveClipping",
    "DifferentialPrivacyClientSideFixedClipping",
    "DifferentialPrivacyServerSideAdaptiveClipping",
    "DifferentialPrivacyServerSideFixedClipping",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedXgbBagging",
    "FedXgbCyclic",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "QFedAvg",
    "Result",
    "Strategy",
    "StrategyState",
    "TooFewReplies",
]
