"""Item-text matching (ITM) with ITC-mined hard negatives.

Each item gets one non-matching text, and each text one non-matching item,
sampled with probability ``softmax(sim / temperature)`` over the rest of the
global batch (BLIP-2). The ITM head classifies the joint pass of all 3B pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ilm_jax.objectives.contrastive import EXCLUDED_LOGIT


def _sample_rows(rng: jax.Array, logits: jax.Array, excluded: jax.Array):
  """One column per row, in proportion to softmax(logits) over allowed ones."""
  logits = jnp.where(excluded, EXCLUDED_LOGIT, logits)
  return jax.random.categorical(rng, logits, axis=-1)


def sample_hard_negatives(
  rng: jax.Array, sim: jax.Array, temperature: jax.Array, ids: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Hard negatives for ITM.

  Args:
    rng: PRNG key.
    sim: float32[B, B] item-text similarity (gradients are stopped).
    temperature: scalar.
    ids: int32[B] item ids; an example with the same id is never a negative.

  Returns:
    (int32[B] index of the negative text for each item, int32[B] index of the
    negative item for each text).
  """
  if sim.shape[0] < 2:
    raise ValueError("ITM hard negatives need a batch of at least 2")
  logits = jax.lax.stop_gradient(sim) / jax.lax.stop_gradient(temperature)
  same = ids[:, None] == ids[None, :]
  text_rng, item_rng = jax.random.split(rng)
  neg_text = _sample_rows(text_rng, logits, same)
  neg_item = _sample_rows(item_rng, logits.T, same.T)
  return neg_text, neg_item


def itm_labels(batch: int) -> jax.Array:
  """int32[3B]: 1 for the B positives, 0 for the 2B negatives after them."""
  return jnp.concatenate(
    [jnp.ones((batch,), jnp.int32), jnp.zeros((2 * batch,), jnp.int32)]
  )


def itm_loss(
  logits: jax.Array, labels: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean 2-way cross-entropy.

  Args:
    logits: float32[N, 2] (no-match, match).
    labels: int32[N].

  Returns:
    (scalar loss, metrics with "acc").
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  acc = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return jnp.mean(nll), {"acc": acc}
