"""flwr-sklearn: a Flower / scikit-learn app."""

import warnings

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from sklearn.metrics import accuracy_score, log_loss

from flwr_sklearn.task import (
    get_model,
    get_model_params,
    load_data,
    set_initial_params,
    set_model_params,
)

app = ClientApp()


def _model(msg: Message, context: Context):
    model = get_model(
        context.run_config["inverse-regularisation"], context.run_config["local-epochs"]
    )
    set_initial_params(model)
    set_model_params(model, msg.content["arrays"].to_numpy_ndarrays())
    return model


@app.train()
def train(msg: Message, context: Context):
    """Fit the received model on local data."""
    model = _model(msg, context)
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    X_train, _, y_train, _ = load_data(partition_id, num_partitions)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few iterations do not converge, by design
        model.fit(X_train, y_train)

    train_logloss = log_loss(y_train, model.predict_proba(X_train), labels=model.classes_)
    content = RecordDict(
        {
            "arrays": ArrayRecord(get_model_params(model)),
            "metrics": MetricRecord({"num-examples": len(X_train), "train_logloss": train_logloss}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context):
    """Evaluate the received model on local test data."""
    model = _model(msg, context)
    partition_id = context.node_config["partition-id"]
    num_partitions = context.node_config["num-partitions"]
    _, X_test, _, y_test = load_data(partition_id, num_partitions)
    metrics = {
        "num-examples": len(X_test),
        "accuracy": accuracy_score(y_test, model.predict(X_test)),
        "test_logloss": log_loss(y_test, model.predict_proba(X_test), labels=model.classes_),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
