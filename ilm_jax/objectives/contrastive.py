"""In-batch contrastive losses over multi-vector representations.

An entity is K unit vectors (one per Q-Former query); text is one. The
similarity of two entities is the best-matching pair of their vectors, and of
an entity and a text the best-matching query. The losses are the symmetric
InfoNCE of CLIP/BLIP-2 with every other example of the *global* batch as a
negative (under ``jax.jit`` with sharded inputs the batch axis here is the
whole data-parallel batch, so negatives come from every device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Logit for pairs excluded from the softmax (duplicates of the positive).
EXCLUDED_LOGIT = -1e9


def max_pair_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Similarity of every a with every b: max over their vector pairs.

  Args:
    a: float32[B, K, E].
    b: float32[C, L, E].

  Returns:
    float32[B, C], ``max_{k,l} <a[i, k], b[j, l]>``.
  """
  return jnp.max(jnp.einsum("ike,jle->ijkl", a, b), axis=(2, 3))


def duplicate_mask(ids: jax.Array) -> jax.Array:
  """bool[B, B]: True off the diagonal where two examples share an id.

  Such pairs are the same entity, so they are not negatives of each other.
  """
  same = ids[:, None] == ids[None, :]
  return same & ~jnp.eye(ids.shape[0], dtype=bool)


def _cross_entropy_diagonal(logits: jax.Array) -> jax.Array:
  """Per-row cross-entropy float32[B] with row i's target at column i."""
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return -jnp.diagonal(log_probs)


def symmetric_info_nce(
  sim: jax.Array,
  temperature: jax.Array,
  a_ids: jax.Array,
  b_ids: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Symmetric InfoNCE with the positive of row i at column i.

  Args:
    sim: float32[B, B], sim[i, j] = similarity of a_i and b_j.
    temperature: scalar > 0.
    a_ids: int32[B] identities of the a side (duplicates are masked out as
      negatives in the b->a direction).
    b_ids: int32[B] identities of the b side (masked in the a->b direction).

  Returns:
    (scalar loss = mean over both directions, metrics with "acc": mean top-1
    accuracy of both directions).
  """
  logits = sim / temperature
  a_to_b = jnp.where(duplicate_mask(b_ids), EXCLUDED_LOGIT, logits)
  b_to_a = jnp.where(duplicate_mask(a_ids), EXCLUDED_LOGIT, logits.T)
  loss = 0.5 * (
    jnp.mean(_cross_entropy_diagonal(a_to_b))
    + jnp.mean(_cross_entropy_diagonal(b_to_a))
  )
  target = jnp.arange(sim.shape[0])
  acc = 0.5 * (
    jnp.mean(jnp.argmax(a_to_b, axis=-1) == target)
    + jnp.mean(jnp.argmax(b_to_a, axis=-1) == target)
  )
  return loss, {"acc": acc}


def entity_contrastive_loss(
  a_feats: jax.Array,
  b_feats: jax.Array,
  temperature: jax.Array,
  a_ids: jax.Array,
  b_ids: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Item-item (II) or user-item (UI) contrastive loss.

  Args:
    a_feats: float32[B, K, E] unit-norm features of the first entities
      (items for II, users for UI).
    b_feats: float32[B, K, E] of their positives (the next item consumed /
      an item from the user's training history).
    temperature: scalar.
    a_ids: int32[B] entity indices of a; b_ids: int32[B] of b.

  Returns:
    (scalar loss, metrics).
  """
  sim = max_pair_similarity(a_feats, b_feats)
  return symmetric_info_nce(sim, temperature, a_ids, b_ids)
