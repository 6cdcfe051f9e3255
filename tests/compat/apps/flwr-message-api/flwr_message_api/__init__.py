"""flwr-message-api: a Flower app using lifespans, Grid.run and error replies."""
