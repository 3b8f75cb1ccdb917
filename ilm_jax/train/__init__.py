"""Training loops: the generic sharded loop and the per-stage entry points."""
