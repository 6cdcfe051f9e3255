"""Flower 1.42 twin of `benchmarks/apps/bench_flpg`: FedAvg over a float32 vector.

Node `partition-id` p adds p + 1 to every entry and reports
`num-examples = 100 * (p + 1)`, so with N nodes the weighted mean update per round is
(2N + 1) / 3 and the ServerApp checks that the final model equals rounds * (2N + 1) / 3.
No evaluation. The ServerApp appends one JSON line per event (round pushed, replies in,
round aggregated, final check) to the run config's `timing-file`, with wall-clock
`time.time()` stamps, which `benchmarks/harness/flower_side.py` reads.
"""
