"""flwr-pytorch: a Flower / PyTorch app."""

import json

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from flwr_pytorch.task import Net, initial_state_dict, total

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Main entry point for the ServerApp."""
    num_rounds: int = context.run_config["num-server-rounds"]
    lr: float = context.run_config["lr"]

    global_model = Net()
    global_model.load_state_dict(initial_state_dict())
    arrays = ArrayRecord(global_model.state_dict())

    strategy = FedAvg(fraction_train=1.0)
    result = strategy.start(
        grid=grid,
        initial_arrays=arrays,
        train_config=ConfigRecord({"lr": lr}),
        num_rounds=num_rounds,
    )

    # Load the final arrays into a model, as one would before torch.save(...).
    state_dict = result.arrays.to_torch_state_dict()
    global_model.load_state_dict(state_dict)
    final = {
        name: [str(tensor.numpy().dtype), tensor.numpy().tolist()]
        for name, tensor in global_model.state_dict().items()
    }
    evaluated = result.evaluate_metrics_clientapp[num_rounds]["param_sum"]
    print(
        "RESULT " + json.dumps({"final": final, "sum": total(global_model), "eval": evaluated}),
        flush=True,
    )
