"""A Flower app that uses a strategy flpg does not provide."""
