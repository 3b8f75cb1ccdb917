"""HR@k and NDCG@k under leave-one-out (one held-out item per user).

HR@k is the share of users whose held-out item is among the top k;
NDCG@k = 1 / log2(rank + 1) for a hit at 1-based rank <= k, else 0 (with a
single relevant item the ideal DCG is 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (5, 10)
MISS = np.iinfo(np.int32).max  # rank of a target absent from a ranked list


def metrics_from_ranks(
  ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
  """HR@k and NDCG@k from 0-based ranks of the held-out items.

  Args:
    ranks: int[N], 0-based rank of each user's held-out item (MISS or any
      value >= max(ks) when it was not ranked).
    ks: cut-offs.

  Returns:
    {"HR@5": ..., "NDCG@5": ..., ...}, means over users.
  """
  ranks = np.asarray(ranks, dtype=np.int64)
  if ranks.ndim != 1 or not len(ranks):
    raise ValueError("ranks must be a non-empty 1-D array")
  out = {}
  for k in ks:
    hit = ranks < k
    gain = np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
    out[f"HR@{k}"] = float(hit.mean())
    out[f"NDCG@{k}"] = float(gain.mean())
  return out


def ranks_from_lists(ranked: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """0-based rank of each target in its ranked list (MISS when absent).

  Args:
    ranked: int[N, L] ranked item indices per user, best first (-1 = empty).
    targets: int[N] held-out item per user.

  Returns:
    int64[N] ranks.
  """
  ranked = np.asarray(ranked)
  targets = np.asarray(targets)
  if ranked.ndim != 2 or ranked.shape[0] != targets.shape[0]:
    raise ValueError(
      f"ranked lists {ranked.shape} do not match targets {targets.shape}"
    )
  match = ranked == targets[:, None]
  first = np.argmax(match, axis=1)
  return np.where(match.any(axis=1), first, MISS).astype(np.int64)


def metrics_from_lists(
  ranked: np.ndarray, targets: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
  """HR@k / NDCG@k of ranked lists (e.g. from generative beam search)."""
  return metrics_from_ranks(ranks_from_lists(ranked, targets), ks)
