"""flwr-custom-strategy: a Flower app with a custom strategy."""
