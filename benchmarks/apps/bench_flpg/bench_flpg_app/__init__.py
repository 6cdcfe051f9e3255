"""flpg twin of `benchmarks/apps/bench_flower`: FedAvg over a float32 vector.

`mode = "fedavg"`: node `partition-id` p adds p + 1 to every entry and reports
`num-examples = 100 * (p + 1)`, so with N nodes the weighted mean update per round is
(2N + 1) / 3; the ServerApp checks that the final model equals rounds * (2N + 1) / 3.
No evaluation. Round times come from the database (`round_metrics`, `messages`,
`arrays`), so the app records nothing of its own.

`mode = "throughput"`: the ServerApp sends `messages` tiny `query` messages (a
ConfigRecord, no arrays) spread over the `min-nodes` nodes in one push, and waits
for every reply: messages per second through the bus.
"""
