"""SuperNode: a federation member's worker (`flpg node`)."""
