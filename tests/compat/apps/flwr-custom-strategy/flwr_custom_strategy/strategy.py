"""A FedAvg that sends a per-round learning rate, takes only part of the averaged
step (a server learning rate) and adds metrics of its own."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class ServerStepFedAvg(FedAvg):
    def __init__(self, server_lr: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.server_lr = server_lr
        self.current: ArrayRecord | None = None
        self.trace: list[str] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Halve the clients' learning rate every round and tell them the round's tag."""
        self.trace.append(f"configure_train {server_round}")
        self.current = arrays
        config["lr"] = 1.0 / 2**server_round
        config["tag"] = f"round-{server_round}"
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's mean, then only `server_lr` of the step from the current model."""
        self.trace.append(f"aggregate_train {server_round}")
        replies = list(replies)
        averaged, metrics = super().aggregate_train(server_round, replies)
        if averaged is None or self.current is None:
            return averaged, metrics
        old = self.current.to_numpy_ndarrays()
        new = averaged.to_numpy_ndarrays()
        stepped = [o + self.server_lr * (n - o) for o, n in zip(old, new, strict=True)]
        metrics["replies"] = len(replies)
        metrics["tags-ok"] = sum(
            int(r.content["metrics"]["tag-ok"]) for r in replies if r.has_content()
        )
        return ArrayRecord(stepped), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask every node to scale what it reports by the round number."""
        self.trace.append(f"configure_evaluate {server_round}")
        config["scale"] = server_round
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """FedAvg's weighted mean, plus the largest value any node reported."""
        self.trace.append(f"aggregate_evaluate {server_round}")
        replies = list(replies)
        metrics = super().aggregate_evaluate(server_round, replies)
        if metrics is not None:
            metrics["max-value"] = max(float(r.content["metrics"]["value"]) for r in replies)
        return metrics
