"""Decoding over the KV-cached LLM: sampling and constrained beam search."""
