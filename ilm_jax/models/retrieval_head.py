"""Retrieval head: rank the whole catalogue from the LLM's last hidden state.

Beyond the paper. Generative decoding ranks items by beam search, which only
ever scores ``num_beams`` identifiers. The retrieval head instead scores
*every* item with one matrix product: the LLM's final hidden state at the
last prompt token (the position that predicts the answer's first token) is
projected and compared by cosine similarity with each item's *adapted*
embedding, the mean of its soft tokens (Q-Former outputs through the
adapter, or the MLP baseline's single token). It trains beside the
generative loss with an in-batch softmax over the batch's items.

The head's parameters live in the trainable tree under ``HEAD_KEY``, next to
the encoder's, so they checkpoint and resume with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

HEAD_KEY = "retrieval_head"
# Initial softmax temperature (CLIP's 0.07); learnt in log space.
INIT_TEMPERATURE = 0.07
MIN_TEMPERATURE = 0.01


class RetrievalHead(nn.Module):
  """Projects LLM hidden states into the adapted item-embedding space.

  Attributes:
    width: D, the LLM width (hidden states and soft tokens share it).
  """

  width: int

  @nn.compact
  def __call__(self, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(float32[B, D] unit query vectors, scalar temperature).

    Args:
      hidden: float[B, D] final hidden states at the last prompt token.
    """
    # Identity start: the hidden state itself is the first query, so the
    # head begins from the LLM's own geometry rather than a random one.
    proj = nn.Dense(
      self.width,
      kernel_init=nn.with_logical_partitioning(
        lambda key, shape, dtype: jnp.eye(shape[0], shape[1], dtype=dtype),
        ("embed", "embed_out"),
      ),
      bias_init=nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("embed_out",)
      ),
      name="query_proj",
    )
    log_t = self.param(
      "log_temperature",
      nn.with_logical_partitioning(
        nn.initializers.constant(np.log(INIT_TEMPERATURE)), ()
      ),
      (),
    )
    q = proj(hidden.astype(jnp.float32))
    temperature = jnp.maximum(jnp.exp(log_t), MIN_TEMPERATURE)
    return unit(q), temperature


def unit(x: jax.Array) -> jax.Array:
  """Rows of x scaled to unit L2 norm (zero rows stay zero)."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def item_vectors(soft: jax.Array) -> jax.Array:
  """float32[E, D] unit item embeddings from float[E, S, D] soft tokens.

  Raises:
    ValueError: the encoder gives no entity tokens (text-only variant).
  """
  if soft.shape[1] == 0:
    raise ValueError(
      "the retrieval head needs entity soft tokens; the 'text' variant has "
      "none (set stage2.retrieval_weight = 0)"
    )
  return unit(soft.astype(jnp.float32).mean(axis=1))


def in_batch_softmax_loss(
  queries: jax.Array,
  items: jax.Array,
  temperature: jax.Array,
  target: jax.Array,
  candidate: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy of each row's target item among the batch's items.

  Args:
    queries: float32[B, D] unit query vectors.
    items: float32[E, D] unit embeddings of the batch's entities.
    temperature: scalar softmax temperature.
    target: int32[B] index into ``items`` of each row's answer item, -1 for
      rows without one (text tasks); those rows do not count.
    candidate: bool[E], True for distinct real items (users and padding
      repeats are no candidates, so they are neither positives nor
      negatives).

  Returns:
    (scalar mean loss over rows with a target, {"retrieval_accuracy",
    "retrieval_rows"}).
  """
  logits = queries @ items.T / temperature
  logits = jnp.where(candidate[None, :], logits, -1e9)
  has = target >= 0
  safe = jnp.where(has, target, 0)
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logprobs, safe[:, None], axis=-1)[:, 0]
  weight = has.astype(jnp.float32)
  rows = jnp.maximum(weight.sum(), 1.0)
  correct = (jnp.argmax(logits, axis=-1) == safe).astype(jnp.float32)
  metrics = {
    "retrieval_accuracy": (correct * weight).sum() / rows,
    "retrieval_rows": weight.sum(),
  }
  return (nll * weight).sum() / rows, metrics
