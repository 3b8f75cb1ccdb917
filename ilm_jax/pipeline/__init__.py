"""The stages of an experiment, each reading the previous stage's workdir."""
