"""Device mesh and logical-axis sharding rules (the one place that builds a mesh)."""
