"""Known metrics every round (train, federated evaluate, server evaluate); with a `gate`
directory, round K trains only once the file `round-K` exists there."""
