"""flwr-mods-lifespan: a Flower app using mods and lifespans."""
