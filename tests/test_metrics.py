"""HR@k / NDCG@k against hand-computed values; full ranking vs brute force."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.eval import full_ranking
from ilm_jax.eval.metrics import (
  MISS,
  metrics_from_lists,
  metrics_from_ranks,
  ranks_from_lists,
)


def test_metrics_match_hand_computation():
  # ranks (0-based): hit at 1st, hit at 3rd, hit at 7th, miss
  m = metrics_from_ranks(np.array([0, 2, 6, MISS]), ks=(5, 10))
  assert m["HR@5"] == pytest.approx(2 / 4)
  assert m["HR@10"] == pytest.approx(3 / 4)
  assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
  assert m["NDCG@10"] == pytest.approx(
    (1 + 1 / math.log2(4) + 1 / math.log2(8)) / 4
  )


def test_ranks_from_lists():
  ranked = np.array([[3, 1, 2], [5, 6, 7], [9, 8, -1]])
  targets = np.array([2, 4, 9])
  np.testing.assert_array_equal(ranks_from_lists(ranked, targets), [2, MISS, 0])
  m = metrics_from_lists(ranked, targets, ks=(1, 3))
  assert m["HR@1"] == pytest.approx(1 / 3)
  assert m["HR@3"] == pytest.approx(2 / 3)
  assert m["NDCG@3"] == pytest.approx((1 / 2 + 1) / 3)


def test_full_ranking_equals_brute_force():
  rng = np.random.default_rng(0)
  num_users, num_items = 37, 23
  u = rng.normal(size=(num_users, 4)).astype(np.float32)
  v = rng.normal(size=(num_items, 4)).astype(np.float32)
  targets = rng.integers(0, num_items, num_users)
  seen = [rng.choice(num_items, 5, replace=False) for _ in range(num_users)]
  score_fn = full_ranking.dot_product_scorer(u, v)
  users = np.arange(num_users)
  for filtered in (False, True):
    got = full_ranking.rank_targets(
      score_fn, users, targets, num_items,
      seen=seen if filtered else None, batch_size=8,
    )  # fmt: skip
    scores = u @ v.T
    for n in range(num_users):
      s = scores[n].copy()
      if filtered:
        drop = [i for i in seen[n] if i != targets[n]]
        s[drop] = -np.inf
      order = np.argsort(-s, kind="stable")
      assert got[n] == list(order).index(targets[n])


def test_popularity_scorer_ranks_by_training_counts():
  train_items = np.array([2, 2, 2, 0, 0, 1])
  score_fn = full_ranking.popularity_scorer(train_items, 4)
  ranks = full_ranking.rank_targets(
    score_fn, np.arange(4), np.array([2, 0, 1, 3]), 4, batch_size=4
  )
  np.testing.assert_array_equal(ranks, [0, 1, 2, 3])
  scores = np.asarray(score_fn(jnp.arange(2)))
  assert scores.shape == (2, 4)
