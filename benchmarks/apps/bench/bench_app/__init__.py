"""Benchmark app: FedAvg over a float32 vector of `model-floats` entries.

Each node sleeps `train-seconds` (standing in for local training) and adds
`partition-id + 1` to every entry, reporting `num-examples = 100 * (partition-id + 1)`.
With 4 nodes the weighted mean update per round is (1 + 4 + 9 + 16) / 10 = 3.0; the
ServerApp checks that the final model equals 3.0 * rounds, so a benchmark run that
"finishes" also computed the right thing.
"""
