"""Submitting a run: user input (`k=v` config, node selection, limits) checked, then stored."""
