"""flwr-sklearn: the model (multinomial logistic regression) and each node's data."""

import numpy as np
from flwr.common import NDArrays
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

NUM_CLASSES = 10
NUM_FEATURES = 64  # 8x8 pixels
HELD_OUT = 300  # the last examples of the shuffled set: the server's test set


def _shuffled():
    """sklearn's digits, scaled to [0, 1] and shuffled the same way everywhere."""
    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(42).permutation(len(y))
    return x[order] / 16.0, y[order]


def load_data(partition_id: int, num_partitions: int):
    """This node's IID share of the federated part: (x_train, x_test, y_train, y_test)."""
    x, y = _shuffled()
    x, y = x[:-HELD_OUT], y[:-HELD_OUT]
    x, y = x[partition_id::num_partitions], y[partition_id::num_partitions]
    split = int(0.8 * len(y))
    return x[:split], x[split:], y[:split], y[split:]


def load_centralized_test():
    """The held-out examples no node trains on."""
    x, y = _shuffled()
    return x[-HELD_OUT:], y[-HELD_OUT:]


def get_model(c: float, local_epochs: int) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=local_epochs, warm_start=True)


def get_model_params(model: LogisticRegression) -> NDArrays:
    """The model's parameters: coefficients, then intercepts."""
    return [model.coef_, model.intercept_]


def set_model_params(model: LogisticRegression, params: NDArrays) -> LogisticRegression:
    model.coef_ = params[0]
    model.intercept_ = params[1]
    return model


def set_initial_params(model: LogisticRegression) -> None:
    """Zeros: sklearn has no parameters before its first fit."""
    model.classes_ = np.arange(NUM_CLASSES)
    model.coef_ = np.zeros((NUM_CLASSES, NUM_FEATURES))
    model.intercept_ = np.zeros((NUM_CLASSES,))
