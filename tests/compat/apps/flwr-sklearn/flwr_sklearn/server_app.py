"""flwr-sklearn: a Flower / scikit-learn app."""

import json
from logging import INFO

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from sklearn.metrics import accuracy_score

from flwr_sklearn.task import (
    get_model,
    get_model_params,
    load_centralized_test,
    set_initial_params,
    set_model_params,
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    num_rounds: int = context.run_config["num-server-rounds"]
    c = context.run_config["inverse-regularisation"]
    local_epochs = context.run_config["local-epochs"]

    model = get_model(c, local_epochs)
    set_initial_params(model)
    arrays = ArrayRecord(get_model_params(model))

    def global_evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Accuracy of the global model on the held-out examples."""
        set_model_params(model, arrays.to_numpy_ndarrays())
        X_test, y_test = load_centralized_test()
        return MetricRecord({"accuracy": accuracy_score(y_test, model.predict(X_test))})

    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=num_rounds,
        evaluate_fn=global_evaluate,
    )

    federated = result.evaluate_metrics_clientapp[num_rounds]["accuracy"]
    central = result.evaluate_metrics_serverapp[num_rounds]["accuracy"]
    log(INFO, "final accuracy: federated %.4f, held-out %.4f", federated, central)
    shapes = [list(a.shape) for a in result.arrays.to_numpy_ndarrays()]
    print(
        "RESULT " + json.dumps({"federated": federated, "central": central, "shapes": shapes}),
        flush=True,
    )
