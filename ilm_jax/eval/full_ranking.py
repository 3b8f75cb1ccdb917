"""Batched full-catalogue ranking of dot-product (or any) scorers.

For each user we compute the held-out item's rank among *all* items, in
batches that stay a fixed shape so jit compiles once. Filtered mode excludes
items the user already consumed (their history before the held-out item),
except the held-out item itself, so repeat consumption is not punished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.eval.metrics import DEFAULT_KS, metrics_from_ranks

DEFAULT_BATCH = 256


@jax.jit
def _target_ranks(scores, targets, exclude):
  """0-based ranks of targets among all items.

  Args:
    scores: float32[B, I] scores (higher is better).
    targets: int32[B] held-out items.
    exclude: bool[B, I] items to drop from the ranking (never the target).

  Returns:
    int32[B] ranks; ties are broken towards the lower item index, so a
    constant scorer ranks deterministically and gets no free hits.
  """
  num_items = scores.shape[1]
  target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)
  item = jnp.arange(num_items)[None, :]
  ahead = (scores > target_score) | (
    (scores == target_score) & (item < targets[:, None])
  )
  return jnp.sum(ahead & ~exclude, axis=1).astype(jnp.int32)


def exclusion_mask(
  seen: Sequence[np.ndarray], targets: np.ndarray, num_items: int
) -> np.ndarray:
  """bool[B, I]: True at each user's seen items other than the target."""
  mask = np.zeros((len(seen), num_items), dtype=bool)
  for row, items in enumerate(seen):
    mask[row, items] = True
  mask[np.arange(len(seen)), targets] = False
  return mask


def rank_targets(
  score_fn: Callable[[np.ndarray], jax.Array],
  users: np.ndarray,
  targets: np.ndarray,
  num_items: int,
  seen: Sequence[np.ndarray] | None = None,
  batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
  """Ranks every user's held-out item over the whole catalogue.

  Args:
    score_fn: maps int32[B] user indices to float32[B, I] item scores.
    users: int32[N] users to evaluate.
    targets: int32[N] their held-out items.
    num_items: I.
    seen: per user, items to exclude (filtered mode); None = unfiltered.
    batch_size: users per batch (the last batch is padded).

  Returns:
    int64[N] 0-based ranks.
  """
  users = np.asarray(users, dtype=np.int32)
  targets = np.asarray(targets, dtype=np.int32)
  if np.any((targets < 0) | (targets >= num_items)):
    raise ValueError(f"held-out item index out of range [0, {num_items})")
  ranks = np.empty(len(users), dtype=np.int64)
  for start in range(0, len(users), batch_size):
    stop = min(start + batch_size, len(users))
    pad = batch_size - (stop - start)
    batch_users = np.pad(users[start:stop], (0, pad), mode="edge")
    batch_targets = np.pad(targets[start:stop], (0, pad), mode="edge")
    if seen is None:
      exclude = np.zeros((batch_size, num_items), dtype=bool)
    else:
      rows = [seen[u] for u in batch_users]
      exclude = exclusion_mask(rows, batch_targets, num_items)
    scores = score_fn(batch_users)
    r = _target_ranks(scores, jnp.asarray(batch_targets), jnp.asarray(exclude))
    ranks[start:stop] = np.asarray(r)[: stop - start]
  return ranks


def evaluate_scorer(
  score_fn: Callable[[np.ndarray], jax.Array],
  targets: np.ndarray,
  num_items: int,
  seen: Sequence[np.ndarray] | None = None,
  ks: Sequence[int] = DEFAULT_KS,
  batch_size: int = DEFAULT_BATCH,
) -> dict[str, float]:
  """HR@k / NDCG@k of a scorer for users 0..N-1 with held-out ``targets``."""
  users = np.arange(len(targets), dtype=np.int32)
  ranks = rank_targets(score_fn, users, targets, num_items, seen, batch_size)
  return metrics_from_ranks(ranks, ks)


def evaluate_modes(
  score_fn: Callable[[np.ndarray], jax.Array],
  targets: np.ndarray,
  num_items: int,
  seen: Sequence[np.ndarray],
  modes: Sequence[str],
  ks: Sequence[int] = DEFAULT_KS,
  batch_size: int = DEFAULT_BATCH,
) -> tuple[dict[str, dict[str, float]], dict[str, np.ndarray]]:
  """A scorer's metrics and per-user ranks in each ranking mode.

  Args:
    score_fn, targets, num_items, ks, batch_size: as ``evaluate_scorer``.
    seen: per user, the items the "filtered" mode drops.
    modes: "unfiltered" and/or "filtered".

  Returns:
    ({mode: {metric: value}}, {mode: int64[N] 0-based ranks of users
    0..N-1}); the ranks let another model's list be compared user by user
    (``metrics.paired_comparison``).
  """
  users = np.arange(len(targets), dtype=np.int32)
  metrics, ranks = {}, {}
  for mode in modes:
    ranks[mode] = rank_targets(
      score_fn,
      users,
      targets,
      num_items,
      seen if mode == "filtered" else None,
      batch_size,
    )
    metrics[mode] = metrics_from_ranks(ranks[mode], ks)
  return metrics, ranks


def dot_product_scorer(user_vectors, item_vectors):
  """score_fn for factor models: float32[B, I] = U[users] @ V^T."""
  user_vectors = jnp.asarray(user_vectors)
  item_vectors = jnp.asarray(item_vectors)

  @jax.jit
  def scores(users):
    return user_vectors[users] @ item_vectors.T

  return scores


def popularity_scorer(train_items: np.ndarray, num_items: int):
  """score_fn ranking items by training interaction count, for everyone."""
  counts = np.bincount(train_items, minlength=num_items).astype(np.float32)
  counts = jnp.asarray(counts)

  @jax.jit
  def scores(users):
    return jnp.broadcast_to(counts, (users.shape[0], num_items))

  return scores
