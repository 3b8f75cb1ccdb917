"""Candidate lists for re-ranking: a retriever's top N items per user.

Evaluation lists come from the retriever as evaluated (ALS fitted on all
training interactions; the held-out item was never in its data), with the
user's earlier items removed, as in filtered full ranking.

Training lists must not be easier than evaluation lists. A retriever fitted
on every training interaction has seen each training target, so it would
rank that target unrealistically high. Training lists therefore come from an
*inner* retriever: ALS fitted on the training interactions minus each user's
last ``holdout`` training items. Its training examples are exactly those
held-out positions: the history before the position, the item there as the
target, the inner retriever's top N (earlier items removed) as candidates.
The inner retriever never saw any target it is asked about, just as the
evaluated retriever never saw the validation or test item; it also had
less data, so its lists are, if anything, harder. ``rank_summary`` reports
the target's rank distribution in both kinds of list.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.cf.als import ALSConfig, train_als
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.eval.full_ranking import dot_product_scorer

DEFAULT_BATCH = 256


@dataclasses.dataclass(frozen=True)
class CandidateLists:
  """Retrieved lists of one set of (user, history, target) examples.

  Attributes:
    users: int32[R] user of each example.
    histories: R arrays of item indices before the target, oldest first.
    targets: int32[R] the item to find.
    ranked: int32[R, L] the retriever's top L items, best first (seen
      items removed); the first N are the candidates, the rest the tail
      that keeps the retriever's order.
  """

  users: np.ndarray
  histories: list[np.ndarray]
  targets: np.ndarray
  ranked: np.ndarray

  def target_ranks(self, num_candidates: int) -> np.ndarray:
    """int64[R] 0-based rank of each target in its top N (-1 = absent)."""
    match = self.ranked[:, :num_candidates] == self.targets[:, None]
    return np.where(match.any(axis=1), np.argmax(match, axis=1), -1)

  def subset(self, rows: np.ndarray) -> CandidateLists:
    return CandidateLists(
      self.users[rows],
      [self.histories[r] for r in rows],
      self.targets[rows],
      self.ranked[rows],
    )


@functools.partial(jax.jit, static_argnames="length")
def _top(scores, exclude, length: int):
  """int32[B, length] indices of the best scores outside ``exclude``."""
  return jax.lax.top_k(jnp.where(exclude, -jnp.inf, scores), length)[1]


def top_items(
  score_fn,
  users: np.ndarray,
  exclude: list[np.ndarray],
  length: int,
  num_items: int,
  batch_size: int = DEFAULT_BATCH,
) -> np.ndarray:
  """Each user's ``length`` best items, best first, excluded items removed.

  Args:
    score_fn: int32[B] users -> float32[B, I] item scores (higher first).
    users: int32[R] users (one row per example; repeats allowed).
    exclude: R arrays of items never to return (the user's earlier items).
    length: L.
    num_items: I.
    batch_size: rows per scoring call (the last call is padded).

  Returns:
    int32[R, L]. Ties follow ``jax.lax.top_k`` (lower item index first).
  """
  users = np.asarray(users, np.int32)
  out = np.empty((len(users), length), np.int32)
  for start in range(0, len(users), batch_size):
    stop = min(start + batch_size, len(users))
    rows = np.pad(users[start:stop], (0, batch_size - (stop - start)), "edge")
    mask = np.zeros((batch_size, num_items), bool)
    for r in range(start, stop):
      mask[r - start, exclude[r]] = True
    top = _top(score_fn(rows), jnp.asarray(mask), length=length)
    out[start:stop] = np.asarray(top)[: stop - start]
  return out


def evaluation_lists(
  split: LeaveOneOutSplit,
  split_name: str,
  users: np.ndarray,
  score_fn,
  length: int,
) -> CandidateLists:
  """Retrieved lists of held-out users for ``split_name`` ("valid"/"test").

  The history is what the split allows (``split.history``, capped); the
  exclusion is everything the user had before (``split.history_all``).
  """
  users = np.asarray(users, np.int32)
  ranked = top_items(
    score_fn,
    users,
    [split.history_all(int(u), split_name) for u in users],
    length,
    split.num_items,
  )
  return CandidateLists(
    users,
    [split.history(int(u), split_name) for u in users],
    split.targets(split_name)[users].astype(np.int32),
    ranked,
  )


def inner_split(split: LeaveOneOutSplit, holdout: int):
  """(inner training users, items; held-out (user, position) pairs).

  Each user keeps at least one training item in the inner data; up to
  ``holdout`` of their last training items are held out.
  """
  if holdout < 1:
    raise ValueError(f"rerank training holdout must be >= 1, got {holdout}")
  users, items, held = [], [], []
  for u, seq in enumerate(split.train_sequences):
    keep = max(1, len(seq) - holdout)
    users.append(np.full(keep, u, np.int32))
    items.append(np.asarray(seq[:keep], np.int32))
    held += [(u, t) for t in range(keep, len(seq))]
  return np.concatenate(users), np.concatenate(items), held


def held_examples(split: LeaveOneOutSplit, held):
  """(int32[R] users, R histories, int32[R] targets) of held-out (user,
  position) pairs: the sequence before each position and the item there."""
  users = np.asarray([u for u, _ in held], np.int32)
  histories = [split.train_sequences[u][:t] for u, t in held]
  targets = np.asarray([split.train_sequences[u][t] for u, t in held], np.int32)
  return users, histories, targets


def training_lists(
  split: LeaveOneOutSplit,
  als: ALSConfig,
  holdout: int,
  length: int,
  mesh=None,
) -> tuple[CandidateLists, dict]:
  """Training examples with lists from the inner retriever (module doc).

  Args:
    split: the leave-one-out split (only its training sequences are read).
    als: hyper-parameters of the inner ALS (those of the CF stage).
    holdout: training items held out per user (their last ones).
    length: L items retrieved per example.
    mesh: optional device mesh for ALS.

  Returns:
    (lists of every held-out position, {"inner_als_seconds", "positions"}).
  """
  users, items, held = inner_split(split, holdout)
  table, info = train_als(
    users, items, split.num_users, split.num_items, als, mesh=mesh
  )
  score_fn = dot_product_scorer(table.users, table.items)
  ex_users, histories, targets = held_examples(split, held)
  ranked = top_items(score_fn, ex_users, histories, length, split.num_items)
  lists = CandidateLists(ex_users, histories, targets, ranked)
  return lists, {"inner_als_seconds": info["seconds"], "positions": len(held)}


def rank_summary(lists: CandidateLists, num_candidates: int) -> dict:
  """The target's rank distribution in top-N lists.

  Returns:
    {"examples", "recall@N" (share of lists holding the target), and among
    those: "rank_mean" (1-based), "rank_1-5", "rank_6-10", "rank_11-20",
    "rank_21+" (shares)}.
  """
  ranks = lists.target_ranks(num_candidates)
  present = ranks[ranks >= 0] + 1
  out = {
    "examples": len(ranks),
    f"recall@{num_candidates}": float(np.mean(ranks >= 0))
    if len(ranks)
    else 0.0,
  }
  if len(present):
    out["rank_mean"] = float(present.mean())
    for lo, hi in ((1, 5), (6, 10), (11, 20)):
      out[f"rank_{lo}-{hi}"] = float(np.mean((present >= lo) & (present <= hi)))
    out["rank_21+"] = float(np.mean(present > 20))
  return out
