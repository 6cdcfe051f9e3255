"""Every node adds (partition-id + 1) with weight 10 * (partition-id + 1)."""
