"""flwr-numpy: a Flower / NumPy app."""
