"""Re-ranking lists: no target leak in training lists; reordering and nulls."""

import os

import numpy as np
import pytest

from ilm_jax.cf.als import ALSConfig, train_als
from ilm_jax.data import load_split
from ilm_jax.data.dataset import Catalog
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.eval import metrics as M
from ilm_jax.eval.full_ranking import dot_product_scorer
from ilm_jax.experiment_config import base_config
from ilm_jax.rerank import candidates as C
from ilm_jax.rerank import evaluate as E
from ilm_jax.rerank.prompts import shown_order


def _lists(rows=30, length=12, num_items=50, seed=0):
  rng = np.random.default_rng(seed)
  ranked = np.stack([rng.permutation(num_items)[:length] for _ in range(rows)])
  targets = np.where(
    rng.random(rows) < 0.7,
    ranked[np.arange(rows), rng.integers(0, length, rows)],
    num_items + 1,  # absent from every list
  ).astype(np.int32)
  return C.CandidateLists(
    np.arange(rows, dtype=np.int32),
    [np.zeros(1, np.int32)] * rows,
    targets,
    ranked.astype(np.int32),
  )


@pytest.mark.parametrize("order", ["retriever", "shuffled"])
def test_reranked_lists_permute_the_top_n_and_keep_the_tail(order):
  lists, n = _lists(), 8
  shown = shown_order(lists, n, order, seed=1)
  scores = np.random.default_rng(2).normal(size=shown.shape)
  out = E.reorder(lists.ranked, shown, scores)
  for r in range(len(out)):
    assert sorted(out[r, :n]) == sorted(lists.ranked[r, :n])
    np.testing.assert_array_equal(out[r, n:], lists.ranked[r, n:])
    # best score first
    by_item = dict(zip(shown[r], scores[r]))
    assert [by_item[i] for i in out[r, :n]] == sorted(scores[r], reverse=True)
  if order == "shuffled":
    assert not np.array_equal(shown, lists.ranked[:, :n])


def test_tied_scores_keep_the_retriever_order():
  lists, n = _lists(), 8
  shown = shown_order(lists, n, "shuffled", seed=3)
  out = E.reorder(lists.ranked, shown, np.zeros(shown.shape))
  np.testing.assert_array_equal(out, lists.ranked)


def test_shuffled_null_is_a_permutation_of_the_top_n():
  lists, n = _lists(), 8
  null = E.shuffled_null(lists.ranked, n, seed=0)
  assert not np.array_equal(null, lists.ranked)
  np.testing.assert_array_equal(
    np.sort(null[:, :n]), np.sort(lists.ranked[:, :n])
  )
  np.testing.assert_array_equal(null[:, n:], lists.ranked[:, n:])


def test_oracle_scores_reach_the_lists_recall_and_beat_both_nulls():
  lists, n = _lists(rows=200), 10
  shown = shown_order(lists, n, "shuffled", seed=0)
  oracle = (shown == lists.targets[:, None]).astype(float)
  out = E.evaluate_lists(lists, shown, oracle, ks=(1, 10))
  recall = np.mean(lists.target_ranks(n) >= 0)
  assert out["ilm"]["HR@1"] == pytest.approx(recall)
  assert out["ilm"]["users"] == 200
  assert out["vs_shuffled"]["HR@1"]["verdict"] == M.ABOVE
  # HR@10 over a top 10 does not depend on its order
  assert out["vs_retriever"]["HR@10"]["diff"] == 0.0
  assert out["ilm"]["HR@10"] == out["retriever"]["HR@10"]
  # Each list's rank of its target, kept for paired comparisons of runs.
  for name in ("ilm", "retriever"):
    ranks = out["ranks"][name]
    assert ranks.shape == (200,)
    assert np.mean(ranks < 1) == pytest.approx(out[name]["HR@1"])
  np.testing.assert_array_equal(
    out["ranks"]["retriever"], M.ranks_from_lists(lists.ranked, lists.targets)
  )


def _toy_split():
  rng = np.random.default_rng(0)
  catalog = Catalog(
    item_ids=np.array([str(i) for i in range(30)]),
    user_ids=np.array([str(u) for u in range(8)]),
    item_fields={},
  )
  train = [
    rng.choice(30, size=3 + u, replace=False).astype(np.int32) for u in range(8)
  ]
  zeros = np.zeros(8, np.int32)
  return LeaveOneOutSplit("toy", catalog, train, zeros, zeros)


def test_inner_retriever_never_trains_on_the_positions_it_lists_for():
  split = _toy_split()
  users, items, held = C.inner_split(split, holdout=3)
  trained = set(zip(users.tolist(), items.tolist()))
  assert len(held) == sum(min(3, len(s) - 1) for s in split.train_sequences)
  for u, t in held:
    seq = split.train_sequences[u]
    assert (u, int(seq[t])) not in trained  # the target was never seen
    assert t >= 1  # every example keeps a history
  for u, seq in enumerate(split.train_sequences):
    assert {i for v, i in trained if v == u} == set(seq[: max(1, len(seq) - 3)])


def _latest_small():
  c = base_config()
  return load_split(c.dataset)


def test_training_lists_are_not_easier_than_evaluation_lists():
  """A retriever fitted on every training interaction would put training
  targets in its lists far more often than evaluation lists hold theirs;
  the inner retriever's training lists hold them no more often."""
  split = _latest_small()
  als = ALSConfig(dim=16, sweeps=4, reg=1.0, alpha=10.0)
  n, holdout = 20, 5
  inner, _ = C.training_lists(split, als, holdout, n)
  users, items = split.train_interactions()
  table, _ = train_als(users, items, split.num_users, split.num_items, als)
  full = dot_product_scorer(table.users, table.items)
  leaky = C.CandidateLists(
    inner.users,
    inner.histories,
    inner.targets,
    C.top_items(full, inner.users, inner.histories, n, split.num_items),
  )
  evaluation = C.evaluation_lists(
    split, "test", np.arange(split.num_users), full, n
  )
  recall = {
    name: C.rank_summary(lists, n)[f"recall@{n}"]
    for name, lists in (
      ("inner", inner),
      ("leaky", leaky),
      ("evaluation", evaluation),
    )
  }
  if os.environ.get("ILM_PRINT"):
    print(recall)
  assert recall["leaky"] > 1.5 * recall["evaluation"]  # the leak is real
  assert recall["inner"] <= recall["evaluation"] + 0.03  # and avoided
