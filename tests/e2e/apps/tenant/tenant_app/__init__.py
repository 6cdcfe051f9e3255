"""Each node adds step * (partition-id + 1); weights 10 * (partition-id + 1)."""
