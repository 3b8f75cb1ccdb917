"""Re-ranking retrieved candidates with the frozen LLM."""
