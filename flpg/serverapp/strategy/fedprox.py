"""FedProx (Li et al., 2018): FedAvg whose nodes add a proximal term to their loss."""

from __future__ import annotations

from collections.abc import Iterable

from flpg.app.message import Message
from flpg.app.records import ArrayRecord, ConfigRecord
from flpg.serverapp.grid import Grid
from flpg.serverapp.strategy.fedavg import FedAvg, MetricsAggrFn
from flpg.serverapp.strategy.fedavgm import check_rate
from flpg.serverapp.strategy.strategy_utils import log


class FedProx(FedAvg):
    """FedAvg on the server; each node adds `proximal_mu / 2 * ||w - w_global||^2` to
    its training loss (w: the weights it trains, w_global: the arrays it received).

    The server side is FedAvg's, streaming included; every training instruction's
    config carries `proximal-mu` (a float) for the ClientApp to read, e.g.
    `mu = msg.content["config"]["proximal-mu"]`, and the ClientApp must add the term
    itself (keep a copy of the received weights before training).

    Parameters (Flower's names, defaults and meaning):

    - `proximal_mu` (0.0): the weight of the proximal term; 0 makes FedProx FedAvg
      (a warning line says so), larger values keep the nodes' weights closer to the
      global ones. A finite number >= 0.
    - FedAvg's parameters, with FedAvg's meaning and defaults (see FedAvg):
      `fraction_train`, `fraction_evaluate`, `min_train_nodes`,
      `min_evaluate_nodes`, `min_available_nodes`, `weighted_by_key`,
      `arrayrecord_key`, `configrecord_key`, `train_metrics_aggr_fn`,
      `evaluate_metrics_aggr_fn`, and (keyword only, flpg's addition) `seed`.

    No state beyond FedAvg's (none). Raises ValueError for a negative or non-finite
    `proximal_mu`.
    """

    def __init__(
        self,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_nodes: int = 2,
        min_evaluate_nodes: int = 2,
        min_available_nodes: int = 2,
        weighted_by_key: str = "num-examples",
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        train_metrics_aggr_fn: MetricsAggrFn | None = None,
        evaluate_metrics_aggr_fn: MetricsAggrFn | None = None,
        proximal_mu: float = 0.0,
        *,
        seed: int | None = None,
    ) -> None:
        check_rate("proximal_mu", proximal_mu)
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=fraction_evaluate,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=min_evaluate_nodes,
            min_available_nodes=min_available_nodes,
            weighted_by_key=weighted_by_key,
            arrayrecord_key=arrayrecord_key,
            configrecord_key=configrecord_key,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
            evaluate_metrics_aggr_fn=evaluate_metrics_aggr_fn,
            seed=seed,
        )
        self.proximal_mu = proximal_mu
        if proximal_mu == 0.0:
            log("FedProx with proximal_mu=0.0 adds no proximal term: it is FedAvg")

    def summary(self) -> None:
        """Log `proximal_mu`, then FedAvg's lines (Flower's lines)."""
        log("\t├──> FedProx settings:")
        log(f"\t│\t└── Proximal mu: {self.proximal_mu}")
        super().summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training instructions, `config` (changed in place, as Flower's
        is) carrying `proximal-mu`."""
        config["proximal-mu"] = float(self.proximal_mu)
        return super().configure_train(server_round, arrays, config, grid)
