"""Collaborative-filtering embeddings: implicit ALS and the CF table."""
