"""HR@k / NDCG@k against hand-computed values; full ranking vs brute force."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.eval import full_ranking
from ilm_jax.eval.metrics import (
  MISS,
  SE_SUFFIX,
  metrics_from_lists,
  metrics_from_ranks,
  paired_comparison,
  per_user_gains,
  ranks_from_lists,
  split_se,
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
  assert m["users"] == 4


def _se(x):
  x = np.asarray(x, dtype=np.float64)
  return np.std(x, ddof=1) / np.sqrt(len(x))


def test_standard_errors_match_numpy():
  ranks = np.array([0, 2, 6, MISS, 1, 12])
  m = metrics_from_ranks(ranks, ks=(5, 10))
  hits10 = [1, 1, 1, 0, 1, 0]
  ndcg10 = [1, 1 / math.log2(4), 1 / math.log2(8), 0, 1 / math.log2(3), 0]
  hits5 = [1, 1, 0, 0, 1, 0]
  ndcg5 = [1, 1 / math.log2(4), 0, 0, 1 / math.log2(3), 0]
  expected = {
    "HR@5": hits5,
    "NDCG@5": ndcg5,
    "HR@10": hits10,
    "NDCG@10": ndcg10,
  }
  assert set(m) == {*expected, *(k + SE_SUFFIX for k in expected), "users"}
  assert m["users"] == 6
  for key, gains in expected.items():
    assert m[key] == pytest.approx(np.mean(gains))
    assert m[key + SE_SUFFIX] == pytest.approx(_se(gains))
  # Spelled out for HR@10 (p = 4/6): sqrt(p (1 - p) * 6 / 5 / 6).
  assert m["HR@10_se"] == pytest.approx(math.sqrt(4 / 6 * 2 / 6 / 5))
  hits, gains = per_user_gains(ranks, 10)
  assert hits.dtype == gains.dtype == np.float64
  np.testing.assert_allclose(hits, hits10)
  np.testing.assert_allclose(gains, ndcg10)


def test_single_user_has_zero_se():
  m = metrics_from_ranks(np.array([3]), ks=(5,))
  assert m == {
    "HR@5": 1.0,
    "HR@5_se": 0.0,
    "NDCG@5": pytest.approx(1 / math.log2(5)),
    "NDCG@5_se": 0.0,
    "users": 1,
  }


def test_paired_comparison_matches_numpy():
  a = np.array([0, 2, 6, MISS, 1, 12])
  b = np.array([3, MISS, 0, 4, 1, 9])
  got = paired_comparison(a, b, ks=(5, 10))
  assert list(got) == ["HR@5", "NDCG@5", "HR@10", "NDCG@10"]
  for k in (5, 10):
    for n, key in enumerate((f"HR@{k}", f"NDCG@{k}")):
      d = per_user_gains(a, k)[n] - per_user_gains(b, k)[n]
      assert got[key]["diff"] == pytest.approx(d.mean())
      assert got[key]["se"] == pytest.approx(_se(d))
  # HR@10: a hits users 0, 1, 2, 4; b hits 0, 2, 3, 4, 5 -> d has mean
  # -1/6, sample variance 17/30 and SE sqrt(17/30 / 6): within 2 SE.
  assert got["HR@10"]["diff"] == pytest.approx(-1 / 6)
  assert got["HR@10"]["se"] == pytest.approx(math.sqrt(17 / 30 / 6))
  assert got["HR@10"]["verdict"] == "within 2 SE"


def test_paired_comparison_verdicts():
  rng = np.random.default_rng(0)
  worse = rng.integers(20, 100, 200)
  better = worse.copy()
  better[:150] = rng.integers(0, 5, 150)  # a hit for 150 of 200 users
  up = paired_comparison(better, worse, ks=(10,))
  assert up["HR@10"]["diff"] == pytest.approx(0.75)
  assert up["HR@10"]["verdict"] == "above"
  assert up["NDCG@10"]["verdict"] == "above"
  down = paired_comparison(worse, better, ks=(10,))
  assert down["HR@10"]["diff"] == pytest.approx(-0.75)
  assert down["HR@10"]["verdict"] == "below"
  same = paired_comparison(better, better, ks=(10,))
  assert same["HR@10"] == {"diff": 0.0, "se": 0.0, "verdict": "within 2 SE"}
  # A hits 3 users more than B and ties elsewhere: d is 1 for 3 of N users,
  # so SE = sqrt(p (1 - p) / (N - 1)) with p = 3 / N and diff > 2 SE only
  # while N < 9.
  for n, want in ((8, "above"), (10, "within 2 SE")):
    b = np.full(n, MISS)
    a = b.copy()
    a[:3] = 0
    got = paired_comparison(a, b, (1,))["HR@1"]
    assert got["se"] == pytest.approx(math.sqrt(3 / n * (1 - 3 / n) / (n - 1)))
    assert got["verdict"] == want
  # The same difference for every user: SE 0 and diff > 0 -> above.
  assert paired_comparison([0, 0], [MISS, MISS], (1,))["HR@1"] == {
    "diff": 1.0,
    "se": 0.0,
    "verdict": "above",
  }
  with pytest.raises(ValueError):
    paired_comparison([0, 1], [0, 1, 2])


def test_split_se_pairs_values_with_their_se():
  m = {
    "filtered/HR@10": 0.5,
    "filtered/HR@10_se": 0.1,
    "valid_rate": 1.0,
    "orphan_se": 0.2,
    "users": 40,
  }
  assert split_se(m) == {
    "filtered/HR@10": (0.5, 0.1),
    "valid_rate": (1.0, None),
    "orphan_se": (0.2, None),
    "users": (40, None),
  }


def test_ranks_from_lists():
  ranked = np.array([[3, 1, 2], [5, 6, 7], [9, 8, -1]])
  targets = np.array([2, 4, 9])
  np.testing.assert_array_equal(ranks_from_lists(ranked, targets), [2, MISS, 0])
  m = metrics_from_lists(ranked, targets, ks=(1, 3))
  assert m["HR@1"] == pytest.approx(1 / 3)
  assert m["HR@3"] == pytest.approx(2 / 3)
  assert m["NDCG@3"] == pytest.approx((1 / 2 + 1) / 3)
  assert m["HR@3_se"] == pytest.approx(_se([1, 0, 1]))
  assert m["users"] == 3


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
      score_fn,
      users,
      targets,
      num_items,
      seen=seen if filtered else None,
      batch_size=8,
    )
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
