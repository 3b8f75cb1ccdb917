"""How the answer tokens of a batch are averaged into one generative loss.

A batch mixes answers of very different lengths: an item identifier is a few
tokens, a description thirty. Averaging over tokens ("token") lets the long
text answers carry most of the gradient; averaging each row's tokens first
and then the rows ("example") gives every prompt one vote, so the few
identifier tokens of the ranking tasks are not drowned.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

WEIGHTINGS = ("token", "example")


def mean_answer_nll(nll: jax.Array, mask: jax.Array, weighting: str):
  """The batch's generative loss.

  Args:
    nll: float32[B, P] negative log-likelihood of each answer position.
    mask: float32[B, P], 1 where the position is an answer token.
    weighting: "token" (mean over all answer tokens) or "example" (mean over
      rows with an answer of each row's mean).

  Returns:
    A float32 scalar (0 when the batch has no answer tokens).
  """
  if weighting == "token":
    return (nll * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  if weighting == "example":
    tokens = mask.sum(-1)
    per_row = (nll * mask).sum(-1) / jnp.maximum(tokens, 1.0)
    rows = (tokens > 0).astype(jnp.float32)
    return (per_row * rows).sum() / jnp.maximum(rows.sum(), 1.0)
  raise ValueError(f"answer weighting must be one of {WEIGHTINGS}")
