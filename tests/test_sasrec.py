"""SASRec: causal masking, training data, resumption, losses, end to end."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.data.dataset import Catalog
from ilm_jax.data.sasrec import (
  SASRecBatches,
  evaluation_histories,
  training_rows,
)
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.eval import full_ranking
from ilm_jax.models import sasrec as M
from ilm_jax.pipeline import sasrec as P
from ilm_jax.pipeline.baselines import read_user_ranks
from ilm_jax.train import loop
from tests.tiny import sasrec_tiny_config

NUM_USERS, NUM_ITEMS, MAX_LEN = 16, 40, 8


def synthetic_split(seed: int = 0) -> LeaveOneOutSplit:
  """Users with distinct items each, so a held-out item never recurs."""
  rng = np.random.default_rng(seed)
  sequences = [
    rng.permutation(NUM_ITEMS)[: rng.integers(4, 2 * MAX_LEN)].astype(np.int32)
    for _ in range(NUM_USERS)
  ]
  catalog = Catalog(
    item_ids=np.array([str(i) for i in range(NUM_ITEMS)]),
    user_ids=np.array([str(u) for u in range(NUM_USERS)]),
    item_fields={},
  )
  return LeaveOneOutSplit(
    "synthetic",
    catalog,
    [s[:-2] for s in sequences],
    np.array([s[-2] for s in sequences], np.int32),
    np.array([s[-1] for s in sequences], np.int32),
  )


def tiny_model(dropout: float = 0.0) -> M.SASRec:
  return M.SASRec(
    M.SASRecConfig(
      num_items=NUM_ITEMS,
      max_len=MAX_LEN,
      dim=16,
      num_blocks=2,
      num_heads=2,
      dropout=dropout,
    )
  )


def test_no_position_sees_a_later_item():
  model = tiny_model()
  params, _ = P.init_params(model, seed=0)
  items = np.array(
    [[M.PAD, M.PAD, 3, 7, 1, 9, 4, 2], [5, 6, 7, 8, 9, 10, 11, 12]], np.int32
  )
  base = np.asarray(model.apply({"params": params}, items))
  for t in range(2, MAX_LEN):
    changed = items.copy()
    changed[:, t] = (changed[:, t] + 13) % NUM_ITEMS
    out = np.asarray(model.apply({"params": params}, changed))
    np.testing.assert_array_equal(out[:, :t], base[:, :t])
    assert not np.allclose(out[:, t], base[:, t])
  # Padding positions are exactly zero.
  np.testing.assert_array_equal(base[0, :2], 0.0)


def test_scores_are_the_last_state_against_every_item():
  model = tiny_model()
  params, _ = P.init_params(model, seed=0)
  items = np.array([[M.PAD, 1, 2, 3, 4, 5, 6, 7]], np.int32)
  hidden = model.apply({"params": params}, items)
  scores = model.apply({"params": params}, items, method=M.SASRec.score_all)
  table = np.asarray(params["item_embedding"])[1:]
  assert scores.shape == (1, NUM_ITEMS)
  np.testing.assert_allclose(
    scores, np.asarray(hidden)[:, -1] @ table.T, rtol=1e-5, atol=1e-6
  )


def test_training_batches_read_only_training_prefixes():
  split = synthetic_split()
  data = SASRecBatches(
    split, batch_size=8, max_len=MAX_LEN, num_negatives=3, seed=0
  )
  inputs, positives = training_rows(split, MAX_LEN)
  for step in range(6):
    users = data.order.batch(step)
    batch = next(data)
    np.testing.assert_array_equal(batch["inputs"], inputs[users])
    np.testing.assert_array_equal(batch["positives"], positives[users])
    assert batch["negatives"].shape == (8, MAX_LEN, 3)
    for row, user in enumerate(users):
      train = split.train_sequences[user]
      held_out = (split.valid_items[user], split.test_items[user])
      for field in ("inputs", "positives"):
        items = batch[field][row]
        items = items[items != M.PAD]
        assert not np.isin(items, held_out).any()
        # Each row is a contiguous piece of the training sequence.
        assert "," + ",".join(map(str, items)) + "," in (
          "," + ",".join(map(str, train)) + ","
        )
      negatives = batch["negatives"][row]
      has_positive = batch["positives"][row] != M.PAD
      assert (negatives[~has_positive] == M.PAD).all()
      assert not np.isin(negatives[has_positive], train).any()
      assert (negatives[has_positive] >= 0).all()


def test_evaluation_histories_follow_the_protocol():
  split = synthetic_split()
  valid = evaluation_histories(split, "valid", MAX_LEN)
  test = evaluation_histories(split, "test", MAX_LEN)
  for user in range(NUM_USERS):
    train = split.train_sequences[user]
    np.testing.assert_array_equal(
      valid[user][valid[user] != M.PAD], train[-MAX_LEN:]
    )
    assert test[user, -1] == split.valid_items[user]
    assert split.test_items[user] not in test[user]


def test_batch_stream_resumes_exactly():
  split = synthetic_split()

  def stream():
    return SASRecBatches(split, 8, MAX_LEN, 2, seed=3)

  reference = stream()
  expected = [next(reference) for _ in range(7)]
  first = stream()
  for _ in range(3):
    next(first)
  resumed = stream()
  resumed.set_state(first.get_state())
  for want in expected[3:]:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


@pytest.mark.parametrize("loss", sorted(M.LOSSES))
def test_losses_give_finite_gradients(loss):
  split = synthetic_split()
  model = tiny_model(dropout=0.2)
  params, _ = P.init_params(model, seed=0)
  batch = next(SASRecBatches(split, 8, MAX_LEN, 1, seed=0))
  loss_fn = P.loss_function(model, loss)
  (value, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params, None, batch, jax.random.key(0)
  )
  assert np.isfinite(float(value)) and float(value) > 0
  assert 0.0 <= float(metrics["accuracy"]) <= 1.0
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and max(norms) > 0


def test_unknown_loss_is_named():
  with pytest.raises(ValueError, match="softmax"):
    P.loss_function(tiny_model(), "hinge")


def test_train_and_evaluate_end_to_end_and_resume(tmp_path):
  config, scfg = sasrec_tiny_config()
  results = P.run_sasrec(config, tmp_path / "straight", scfg)
  metrics = results[P.MODEL_NAME]
  for split_name in ("valid", "test"):
    for mode in ("unfiltered", "filtered"):
      values = metrics[split_name][mode]
      assert values["users"] == 40
      assert all(np.isfinite(v) for v in values.values())
  assert (tmp_path / "straight" / "eval" / "sasrec.md").exists()
  # Per-user filtered ranks beside the metrics, for paired comparisons.
  ranks = read_user_ranks(tmp_path / "straight", [P.MODEL_NAME])[P.MODEL_NAME]
  for split_name in ("valid", "test"):
    assert ranks[split_name]["users"] == list(range(40))
    hits = np.mean(np.asarray(ranks[split_name]["filtered"]) < 10)
    assert hits == pytest.approx(metrics[split_name]["filtered"]["HR@10"])
  # An interrupted run: the same workdir with only the step-3 checkpoint
  # (training stopped after step 3) resumes and ends where the
  # uninterrupted run did.
  checkpoints = tmp_path / "straight" / P.STAGE_DIR / loop.CHECKPOINT_DIR
  interrupted = tmp_path / "interrupted"
  shutil.copytree(
    tmp_path / "straight" / P.STAGE_DIR, interrupted / P.STAGE_DIR
  )
  copied = interrupted / P.STAGE_DIR / loop.CHECKPOINT_DIR
  assert sorted(p.name for p in copied.iterdir()) == ["3", "6"]
  shutil.rmtree(copied / "6")
  resumed = P.run_sasrec(config, interrupted, scfg)
  assert resumed == results
  want, _ = ckpt.load_params(checkpoints)
  got, _ = ckpt.load_params(copied)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_retriever_top_n_matches_the_full_ranking(tmp_path):
  split = synthetic_split()
  model = tiny_model()
  params, _ = P.init_params(model, seed=1)
  users = np.arange(NUM_USERS, dtype=np.int32)
  for filtered in (False, True):
    retriever = P.Retriever(model, params, split, "test")
    top = retriever.top_n(users, 5, filtered=filtered)
    seen = retriever.seen if filtered else None
    for j in range(5):
      # The j-th retrieved item is what the full ranking puts at rank j.
      ranks = full_ranking.rank_targets(
        retriever.score_fn, users, top[:, j], NUM_ITEMS, seen, batch_size=8
      )
      np.testing.assert_array_equal(ranks, j)
    if filtered:
      for user in users:
        assert not np.isin(top[user], retriever.seen[user]).any()
