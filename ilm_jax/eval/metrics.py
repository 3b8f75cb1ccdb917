"""HR@k and NDCG@k under leave-one-out (one held-out item per user).

HR@k is the share of users whose held-out item is among the top k;
NDCG@k = 1 / log2(rank + 1) for a hit at 1-based rank <= k, else 0 (with a
single relevant item the ideal DCG is 1).

Every mean over users comes with its standard error (key ``M + SE_SUFFIX``):
the sample standard deviation of the per-user gains (ddof=1) over sqrt(N),
so two numbers are only worth comparing when they differ by more than a few
SEs. ``paired_comparison`` does that for two models scored on the same
users, where the SE of the per-user differences is the one that matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

DEFAULT_KS = (5, 10)
MISS = np.iinfo(np.int32).max  # rank of a target absent from a ranked list
SE_SUFFIX = "_se"  # metric "HR@10" has its standard error under "HR@10_se"
USERS = "users"  # key of the number of users a metric dict averages over
ABOVE, BELOW, WITHIN = "above", "below", "within 2 SE"


def _check_ranks(ranks) -> np.ndarray:
  ranks = np.asarray(ranks, dtype=np.int64)
  if ranks.ndim != 1 or not len(ranks):
    raise ValueError("ranks must be a non-empty 1-D array")
  return ranks


def standard_error(values: np.ndarray) -> float:
  """Standard error of the mean: std(ddof=1) / sqrt(N), 0.0 when N == 1.

  Args:
    values: float[N], N >= 1.

  Returns:
    The standard error.
  """
  values = np.asarray(values, dtype=np.float64)
  if len(values) < 2:
    return 0.0
  return float(values.std(ddof=1) / math.sqrt(len(values)))


def per_user_gains(ranks: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-user hit and NDCG gain at cut-off k.

  Args:
    ranks: int[N], 0-based rank of each user's held-out item (MISS or any
      value >= k when it was not ranked).
    k: cut-off.

  Returns:
    (float64[N] hits, 1.0 where rank < k else 0.0; float64[N] NDCG gains,
    1 / log2(rank + 2) where rank < k else 0.0). Their means are HR@k and
    NDCG@k.
  """
  ranks = _check_ranks(ranks)
  hit = ranks < k
  gain = np.where(hit, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)
  return hit.astype(np.float64), gain.astype(np.float64)


def _gains_by_metric(ranks, ks) -> dict[str, np.ndarray]:
  """{"HR@k": float64[N], "NDCG@k": float64[N], ...} in ``ks`` order."""
  out = {}
  for k in ks:
    out[f"HR@{k}"], out[f"NDCG@{k}"] = per_user_gains(ranks, k)
  return out


def metrics_from_ranks(
  ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float | int]:
  """HR@k and NDCG@k, with standard errors, from 0-based ranks.

  Args:
    ranks: int[N], 0-based rank of each user's held-out item (MISS or any
      value >= max(ks) when it was not ranked).
    ks: cut-offs.

  Returns:
    {"HR@5": mean, "HR@5_se": its standard error, "NDCG@5": ...,
    "NDCG@5_se": ..., ..., "users": N (int)}; means over users.
  """
  ranks = _check_ranks(ranks)
  out: dict[str, float | int] = {}
  for key, gains in _gains_by_metric(ranks, ks).items():
    out[key] = float(gains.mean())
    out[key + SE_SUFFIX] = standard_error(gains)
  out[USERS] = len(ranks)
  return out


def verdict(diff: float, se: float) -> str:
  """Whether a difference is more than 2 SE above or below zero.

  Args:
    diff: mean difference (A minus B).
    se: its standard error (>= 0).

  Returns:
    "above" if diff > 2 * se, "below" if diff < -2 * se, else "within 2 SE"
    (so a zero difference is always "within 2 SE").
  """
  if diff > 2.0 * se:
    return ABOVE
  if diff < -2.0 * se:
    return BELOW
  return WITHIN


def paired_comparison(
  ranks_a: np.ndarray, ranks_b: np.ndarray, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, dict[str, float | str]]:
  """Model A minus model B on the same users, with the paired SE.

  Args:
    ranks_a: int[N] ranks of model A's held-out items.
    ranks_b: int[N] ranks of model B for the same users in the same order.
    ks: cut-offs.

  Returns:
    {"HR@5": {"diff": mean(d), "se": std(d, ddof=1) / sqrt(N),
    "verdict": "above" | "below" | "within 2 SE"}, "NDCG@5": ..., ...}
    where d = float64[N] per-user gain of A minus that of B, and the
    verdict says whether A is more than 2 SE above or below B.

  Raises:
    ValueError: the rank vectors differ in shape.
  """
  ranks_a, ranks_b = _check_ranks(ranks_a), _check_ranks(ranks_b)
  if ranks_a.shape != ranks_b.shape:
    raise ValueError(
      f"paired ranks must cover the same users: {ranks_a.shape} vs "
      f"{ranks_b.shape}"
    )
  gains_b = _gains_by_metric(ranks_b, ks)
  out = {}
  for key, gains_a in _gains_by_metric(ranks_a, ks).items():
    d = gains_a - gains_b[key]
    diff, se = float(d.mean()), standard_error(d)
    out[key] = {"diff": diff, "se": se, "verdict": verdict(diff, se)}
  return out


def is_se_key(key: str, metrics: Mapping[str, object]) -> bool:
  """Whether ``key`` is the standard error of another key of ``metrics``."""
  return key.endswith(SE_SUFFIX) and key[: -len(SE_SUFFIX)] in metrics


def split_se(
  metrics: Mapping[str, float],
) -> dict[str, tuple[float, float | None]]:
  """Pairs each value with its standard error.

  Args:
    metrics: {"HR@10": 0.07, "HR@10_se": 0.01, "users": 40, ...}; prefixed
      keys such as "filtered/HR@10" / "filtered/HR@10_se" pair the same way.

  Returns:
    {"HR@10": (0.07, 0.01), "users": (40, None), ...} in the order of
    ``metrics``, without the SE keys (an "X_se" key whose "X" is absent
    stays as a value of its own).
  """
  return {
    key: (value, metrics.get(key + SE_SUFFIX))
    for key, value in metrics.items()
    if not is_se_key(key, metrics)
  }


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
) -> dict[str, float | int]:
  """HR@k / NDCG@k (with SEs and "users") of ranked lists, e.g. from
  generative beam search; see ``metrics_from_ranks``."""
  return metrics_from_ranks(ranks_from_lists(ranked, targets), ks)
