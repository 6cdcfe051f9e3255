"""SuperExec: launches runs (`flpg exec`) and runs one ServerApp per process (`runner`)."""
