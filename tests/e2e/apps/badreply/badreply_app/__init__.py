"""Replies that must be rejected without breaking the round."""
