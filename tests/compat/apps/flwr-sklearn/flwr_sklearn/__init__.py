"""flwr-sklearn: a Flower / scikit-learn app."""
