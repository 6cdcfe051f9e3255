"""An app that misbehaves on purpose, in ways its run config picks."""
