"""Detection engine: rolling per-series state, alert episodes (rules build on these)."""
