"""Codes of prompt positions in ``slot_entity``, the ILM's input contract.

A prompt position holds a word (its token's embedding), a trainable
soft-prompt vector, or one of an entity's soft tokens (a local entity index
>= 0). The data pipeline writes these codes and the model reads them, so
they live here, importable without JAX.
"""

WORD = -1  # a plain word embedding
SOFT_PROMPT = -2  # a trainable soft-prompt vector
