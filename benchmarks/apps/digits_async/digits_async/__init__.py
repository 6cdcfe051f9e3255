"""The digits example (examples/digits) with nodes of different speeds: a node sleeps
`train-seconds` x its node config's `slowdown` (default 1) per training, and the
ServerApp trains with FedAvg or FedBuff (run config `strategy`)."""
