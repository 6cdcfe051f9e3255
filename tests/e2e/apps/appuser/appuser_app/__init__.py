"""Reports what its processes may touch (`probe`), then runs deterministic FedAvg."""
