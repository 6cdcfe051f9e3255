"""flwr-analytics: a Flower / federated analytics app."""
