"""Checkpointing: orbax managers for train state, data position and config."""
