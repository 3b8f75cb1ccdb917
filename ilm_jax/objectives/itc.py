"""Item-text contrastive loss (ITC): best query against the text's [CLS]."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ilm_jax.objectives.contrastive import symmetric_info_nce


def item_text_similarity(item_feats: jax.Array, text_feats: jax.Array):
  """Similarity of every item with every text.

  Args:
    item_feats: float32[B, K, E] unit-norm query features.
    text_feats: float32[C, E] unit-norm text features.

  Returns:
    float32[B, C], ``max_k <item[i, k], text[j]>`` (BLIP-2's ITC).
  """
  return jnp.max(jnp.einsum("ike,je->ijk", item_feats, text_feats), axis=-1)


def itc_loss(
  item_feats: jax.Array,
  text_feats: jax.Array,
  temperature: jax.Array,
  item_ids: jax.Array,
) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
  """ITC over the global batch.

  Args:
    item_feats: float32[B, K, E]; text_feats: float32[B, E] (pair i is
      item i with its text i).
    temperature: scalar.
    item_ids: int32[B]; a repeated item (and so its text) is not a negative.

  Returns:
    (scalar loss, metrics, the similarity float32[B, B] for hard negatives).
  """
  sim = item_text_similarity(item_feats, text_feats)
  loss, metrics = symmetric_info_nce(sim, temperature, item_ids, item_ids)
  return loss, metrics, sim
