"""Reports how nodes ran it: which process, what context state, when."""
