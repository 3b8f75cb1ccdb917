"""Models: the frozen LLM decoder, BERT, the Q-Former and the ILM."""
