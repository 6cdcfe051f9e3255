"""Federated logistic regression in numpy."""
