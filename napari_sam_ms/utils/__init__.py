"""Pre- and post-processing helpers (numpy only)."""
