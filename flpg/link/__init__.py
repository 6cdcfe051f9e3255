"""SuperLink: liveness and hygiene sweeps (`flpg link`)."""
