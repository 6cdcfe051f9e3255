"""flwr-pytorch: a Flower / PyTorch app."""
