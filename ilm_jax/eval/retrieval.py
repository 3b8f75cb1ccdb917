"""Full-catalogue ranking by the retrieval head (beside generative decoding).

Each evaluation prompt gives one query vector (the retrieval head on the
LLM's last prompt hidden state); every item gives one vector (the mean of
its adapted soft tokens). Scores for all items are one matrix product, and
``ilm_jax.eval.full_ranking`` turns them into the held-out item's rank, so
HR@k / NDCG@k here count the whole catalogue rather than ``num_beams``
decoded identifiers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.eval import full_ranking
from ilm_jax.eval.generative import per_prompt
from ilm_jax.eval.metrics import DEFAULT_KS, metrics_from_ranks

ITEM_CHUNK = 256  # items encoded per call


def catalogue_vectors(model, encoder_params, cf_table, num_items) -> np.ndarray:
  """float32[I, D] unit adapted embeddings of every item."""
  embed = jax.jit(model.item_vectors)
  rows = model.num_users + np.arange(num_items, dtype=np.int32)
  out = []
  for start in range(0, num_items, ITEM_CHUNK):
    chunk = rows[start : start + ITEM_CHUNK]
    padded = np.pad(chunk, (0, ITEM_CHUNK - len(chunk)), mode="edge")
    out.append(
      np.asarray(embed(encoder_params, cf_table, padded))[: len(chunk)]
    )
  return np.concatenate(out)


def prompt_queries(
  model,
  encoder_params,
  llm_params,
  cf_table,
  prompt_encoder,
  prompts,
  *,
  batch_size,
  buckets,
) -> np.ndarray:
  """float32[N, D] unit retrieval queries of N prompts."""
  return per_prompt(
    model.retrieval_queries,
    encoder_params,
    llm_params,
    cf_table,
    prompt_encoder,
    prompts,
    batch_size=batch_size,
    buckets=buckets,
  )


def retrieval_metrics(
  queries: np.ndarray,
  items: np.ndarray,
  targets: np.ndarray,
  seen,
  ks=DEFAULT_KS,
) -> dict[str, float]:
  """{"unfiltered/HR@5": ..., "filtered/NDCG@10": ...} over all items.

  Args:
    queries: float32[N, D] prompt queries.
    items: float32[I, D] item vectors.
    targets: int[N] held-out items.
    seen: per row, the items the user had (excluded when filtered).
    ks: cut-offs.
  """
  scores = jnp.asarray(queries) @ jnp.asarray(items).T
  rows = np.arange(len(queries), dtype=np.int32)
  out = {}
  for name, excluded in (("unfiltered", None), ("filtered", list(seen))):
    ranks = full_ranking.rank_targets(
      lambda r: scores[r],
      rows,
      np.asarray(targets, np.int32),
      items.shape[0],
      excluded,
      batch_size=min(full_ranking.DEFAULT_BATCH, len(rows)),
    )
    for key, value in metrics_from_ranks(ranks, ks).items():
      out[f"{name}/{key}"] = value
  return out
