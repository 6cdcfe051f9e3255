"""Running apps written for other frameworks' import paths unchanged (see `flpg.compat.flwr`)."""
