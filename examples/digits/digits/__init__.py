"""Federated classification of scikit-learn's 8x8 handwritten digits with a numpy MLP."""
