"""An app that fails on purpose."""
