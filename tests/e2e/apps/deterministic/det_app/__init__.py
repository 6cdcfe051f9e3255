"""A deterministic federated app: every update and weight is known in advance."""
