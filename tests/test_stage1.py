"""Stage-1 data, batches, and the end-to-end run with resume."""

import json

import numpy as np
import pytest

from ilm_jax.cf.table import CFTable
from ilm_jax.data import dataset as ds
from ilm_jax.data import leave_one_out, load_split
from ilm_jax.data.stage1 import (
  EpochStream,
  Stage1Batches,
  build_stage1_examples,
  write_stage1_records,
)
from ilm_jax.experiment_config import base_config
from ilm_jax.pipeline import cf as cf_stage
from ilm_jax.pipeline import stage1
from tests.tiny import tiny_bert_dir


def _split(with_text=True):
  sequences = [
    np.array([0, 1, 2, 3, 4], np.int32),
    np.array([2, 2, 5, 1, 3], np.int32),
    np.array([4, 0, 5, 2], np.int32),
  ]
  fields = {}
  if with_text:
    fields = {
      "title": np.array(["A", "B", "", "D", "E", "F"]),
      "genres": np.array(["x", "y", "", "", "z", ""]),
    }
  catalog = ds.Catalog(
    np.array([f"i{i}" for i in range(6)]),
    np.array(["u0", "u1", "u2"]),
    fields,
  )
  return leave_one_out(ds.Dataset("toy", catalog, sequences))


def test_examples_use_training_interactions_only():
  split = _split()
  ex = build_stage1_examples(split)
  # Training sequences: [0,1,2], [2,2,5], [4,0].
  assert ex.ii_pairs.tolist() == [[0, 1], [1, 2], [2, 5], [4, 0]]
  assert sorted(map(tuple, ex.ui_pairs.tolist())) == sorted(
    [(0, 0), (0, 1), (0, 2), (1, 2), (1, 2), (1, 5), (2, 4), (2, 0)]
  )
  # Item 2 has no text; "genres: x" follows the title.
  assert ex.text_items.tolist() == [0, 1, 3, 4, 5]
  assert ex.texts[0] == "A; genres: x"
  # Held out: (last train item, validation item), (user, validation item).
  assert ex.heldout_ii.tolist() == [[2, 3], [5, 1], [0, 5]]
  assert ex.heldout_ui.tolist() == [[0, 3], [1, 1], [2, 5]]
  trained = set(map(tuple, ex.ii_pairs.tolist()))
  assert not trained & set(map(tuple, ex.heldout_ii.tolist()))
  # Filtered ranking leaves out each pair's user's training items.
  seen = [sorted(s.tolist()) for s in ex.heldout_ii_seen]
  assert seen == [[0, 1, 2], [2, 5], [0, 4]]
  assert [sorted(s.tolist()) for s in ex.heldout_ui_seen] == seen


def test_a_repeated_item_stays_rankable_when_it_is_the_target():
  # Trained on 0, 1; validation item 0 again (a re-watch), test item 2.
  catalog = ds.Catalog(np.array(["a", "b", "c"]), np.array(["u"]), {})
  split = leave_one_out(
    ds.Dataset("toy", catalog, [np.array([0, 1, 0, 2], np.int32)])
  )
  ex = build_stage1_examples(split)
  assert ex.heldout_ii.tolist() == [[1, 0]]
  assert [s.tolist() for s in ex.heldout_ii_seen] == [[1]]
  # (user, 0) is a training pair: no held-out user-item pair.
  assert len(ex.heldout_ui) == 0 and ex.heldout_ui_seen == ()


def test_items_without_text_train_through_ii_ui(tmp_path):
  ex = build_stage1_examples(_split(with_text=False))
  assert not ex.has_text
  write_stage1_records(tmp_path, ex, None, None)
  batches = Stage1Batches(tmp_path, 4, ("ii", "ui"), seed=0)
  batch = next(batches)
  assert set(batch) == {"ii_a", "ii_b", "ui_user", "ui_item"}
  with pytest.raises(ValueError, match="no record file"):
    Stage1Batches(tmp_path, 4, ("text", "ii"), seed=0)


def test_epoch_stream_covers_each_example_once_per_epoch():
  stream = EpochStream(10, 4, seed=1, salt=0)
  first = np.concatenate([stream.batch(s) for s in range(5)])  # 2 epochs
  assert sorted(first[:10].tolist()) == list(range(10))
  assert sorted(first[10:20].tolist()) == list(range(10))
  assert first[:10].tolist() != first[10:20].tolist()


def test_batches_resume_at_saved_position(tmp_path):
  ex = build_stage1_examples(_split())
  ids = np.arange(5 * 3, dtype=np.int32).reshape(5, 3)
  mask = np.ones_like(ids)
  write_stage1_records(tmp_path, ex, ids, mask)
  a = Stage1Batches(tmp_path, 4, ("text", "ii", "ui"), seed=3)
  for _ in range(3):
    next(a)
  state = a.get_state()
  expected = [next(a) for _ in range(2)]
  b = Stage1Batches(tmp_path, 4, ("text", "ii", "ui"), seed=3)
  b.set_state(json.loads(json.dumps(state)))
  for want in expected:
    got = next(b)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  # Token rows follow their items.
  pos = {int(i): r for r, i in enumerate(ex.text_items)}
  batch = expected[0]
  for item, row in zip(batch["text_item"], batch["text_ids"]):
    np.testing.assert_array_equal(row, ids[pos[int(item)]])


def test_latest_small_text_has_title_genres_tags():
  config = base_config()
  split = load_split(config.dataset)
  ex = build_stage1_examples(split)
  assert ex.has_text and len(ex.text_items) == split.num_items
  assert any("genres:" in t and "tags:" in t for t in ex.texts[:50])
  assert any("(19" in t for t in ex.texts[:50])  # title with year
  assert len(ex.heldout_ii) > 0.5 * split.num_users


def _tiny_config(bert_dir, num_steps):
  c = base_config()
  c.dataset.max_users = 24
  c.qformer.bert_path = str(bert_dir)
  c.qformer.num_queries = 2
  c.qformer.num_cf_tokens = 2
  c.qformer.embed_dim = 8
  c.qformer.max_text_length = 12
  c.stage1.batch_size = 8
  c.stage1.train.num_steps = num_steps
  c.stage1.train.warmup_steps = 1
  c.stage1.train.checkpoint_every = 2
  c.stage1.train.log_every = 1
  c.stage1.train.progress_bar = False
  c.stage1.eval.batch_size = 64
  c.stage1.eval.candidates = 10
  return c


def _svd_cf_table(config, workdir, dim=8):
  """A quick CF table: truncated SVD of the training interaction matrix."""
  split = load_split(config.dataset)
  users, items = split.train_interactions()
  matrix = np.zeros((split.num_users, split.num_items), np.float32)
  np.add.at(matrix, (users, items), 1.0)
  u, s, vt = np.linalg.svd(matrix, full_matrices=False)
  root = np.sqrt(s[:dim])
  table = np.concatenate([u[:, :dim] * root, vt[:dim].T * root])
  CFTable(table.astype(np.float32), split.num_users, split.num_items).save(
    workdir / "cf", config=cf_stage._provenance(config)
  )


@pytest.mark.slow
def test_run_resumes_after_interruption(tmp_path, monkeypatch):
  bert_dir = tiny_bert_dir(tmp_path / "bert")
  config = _tiny_config(bert_dir, num_steps=4)
  workdir = tmp_path / "work"
  _svd_cf_table(config, workdir)

  original_next = Stage1Batches.__next__

  def crash_at_step_3(self):
    if self.step == 2:
      raise KeyboardInterrupt("simulated interruption")
    return original_next(self)

  monkeypatch.setattr(Stage1Batches, "__next__", crash_at_step_3)
  with pytest.raises(KeyboardInterrupt):
    stage1.run(config, workdir)
  monkeypatch.setattr(Stage1Batches, "__next__", original_next)
  result = stage1.run(config, workdir)

  out = workdir / "stage1"
  history = json.loads((out / "metrics.json").read_text())
  assert [r["step"] for r in history["train"]] == [1, 2, 3, 4]
  assert [r["step"] for r in history["eval"]] == [0, 4]
  for key in ("i2t_recall_at_10", "ii_heldout_acc", "ui_heldout_acc"):
    assert 0.0 <= result[key] <= 1.0 and f"start/{key}" in result
  assert result["objectives"] == "itc,itm,itg,ii,ui"
  assert np.isfinite(result["loss"])
  assert list((out / "tensorboard").iterdir())
  # The summary a stage-2 comparison prints: the run's first and last
  # evaluations.
  summary = stage1.retrieval_summary(out, 10)
  assert summary["step"] == 4
  assert summary["item-text R@10, start"] == result["start/i2t_recall_at_10"]
  assert summary["item-text R@10, trained"] == result["i2t_recall_at_10"]
  assert (
    summary["user-item held-out R@10, trained"]
    == (result["ui_heldout_recall_at_10"])
  )
  for name in ("ii", "ui"):
    filtered = result[f"{name}_heldout_filtered_recall_at_10"]
    # Leaving a user's items out can only lift the target.
    assert result[f"{name}_heldout_recall_at_10"] <= filtered <= 1.0
  assert (
    summary["item-item held-out R@10, filtered, trained"]
    == (result["ii_heldout_filtered_recall_at_10"])
  )

  qformer, params, info = stage1.load_stage1_qformer(out)
  assert qformer.num_queries == 2 and qformer.cf_dim == 8
  assert params["query_tokens"].shape == (2, 16)
  assert info["max_text_length"] == 12


def test_retrieval_summary_reads_the_first_and_last_evaluation(tmp_path):
  def write(evals):
    (tmp_path / "metrics.json").write_text(
      json.dumps({"train": [], "eval": evals, "final": {}})
    )

  assert stage1.retrieval_summary(tmp_path, 10) is None  # no run
  start = {
    "step": 0,
    "i2t_recall_at_10": 0.01,
    "ii_heldout_recall_at_10": 0.02,
    "item_chance_at_10": 0.005,
  }
  write([start])
  assert stage1.retrieval_summary(tmp_path, 10) is None  # never trained
  later = {**start, "i2t_recall_at_10": 0.4, "ii_heldout_recall_at_10": 0.05}
  write(
    [
      {**later, "step": 600},
      start,
      {**later, "step": 300, "i2t_recall_at_10": 0.2},
    ]
  )
  assert stage1.retrieval_summary(tmp_path, 10) == {
    "step": 600,
    "item-text R@10, start": 0.01,
    "item-text R@10, trained": 0.4,
    "item-item held-out R@10, start": 0.02,
    "item-item held-out R@10, trained": 0.05,
    "chance R@10": 0.005,
  }  # no user-item pairs evaluated: no user-item columns


def test_cf_table_mismatch_is_named(tmp_path):
  config = base_config()
  config.dataset.max_users = 24
  CFTable(np.zeros((5, 4), np.float32), 2, 3).save(
    tmp_path / "cf", config=cf_stage._provenance(config)
  )
  with pytest.raises(ValueError, match="rerun the cf stage"):
    stage1.run(config, tmp_path)


def test_retrieval_metrics_match_brute_force():
  from ilm_jax.eval.stage1_retrieval import (
    heldout_retrieval,
    item_to_text_recall,
  )

  r = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  items = unit(r.normal(size=(30, 2, 4))).astype(np.float32)
  texts = unit(r.normal(size=(30, 4))).astype(np.float32)
  sim = np.einsum("ike,je->ijk", items, texts).max(-1)
  want = np.mean([(sim[i] > sim[i, i]).sum() < 5 for i in range(30)])
  assert item_to_text_recall(items, texts, 5) == pytest.approx(want)
  # A query equal to its target item ranks it first.
  targets = np.array([3, 7, 11])
  recall, acc = heldout_retrieval(items[targets], targets, items, 1, 10, 0)
  assert recall == 1.0 and acc == 1.0
  queries = unit(r.normal(size=(3, 2, 4))).astype(np.float32)
  pair = np.einsum("qke,ile->qikl", queries, items).max((2, 3))
  ranks = [(pair[q] > pair[q, t]).sum() for q, t in enumerate(targets)]
  recall, _ = heldout_retrieval(queries, targets, items, 10, 10, 0)
  assert recall == pytest.approx(np.mean(np.array(ranks) < 10))


def test_filtered_recall_leaves_out_each_users_training_items():
  from ilm_jax.eval.stage1_retrieval import filtered_recall

  r = np.random.default_rng(2)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  items = unit(r.normal(size=(20, 2, 4))).astype(np.float32)
  queries = unit(r.normal(size=(5, 2, 4))).astype(np.float32)
  targets = np.array([0, 4, 8, 12, 16])
  pair = np.einsum("qke,ile->qikl", queries, items).max((2, 3))
  # Each query's seen items: the three items scoring above its target.
  seen = []
  for q, t in enumerate(targets):
    above = np.flatnonzero(pair[q] > pair[q, t])
    seen.append(above[:3].astype(np.int32))
  ranks = np.array(
    [(pair[q] > pair[q, t]).sum() - len(seen[q]) for q, t in enumerate(targets)]
  )
  for k in (1, 3):
    want = np.mean(ranks < k)
    assert filtered_recall(queries, targets, items, k, seen) == pytest.approx(
      want
    )
  unfiltered = np.mean(ranks + np.array([len(x) for x in seen]) < 3)
  assert filtered_recall(queries, targets, items, 3, None) == pytest.approx(
    unfiltered
  )
  # Leaving nothing out is the unfiltered ranking.
  empty = [np.zeros(0, np.int32)] * 5
  assert filtered_recall(queries, targets, items, 3, empty) == pytest.approx(
    unfiltered
  )


def test_heldout_accuracy_on_a_catalogue_smaller_than_the_candidates():
  from ilm_jax.eval.stage1_retrieval import heldout_retrieval

  r = np.random.default_rng(1)
  items = r.normal(size=(6, 2, 4)).astype(np.float32)
  items /= np.linalg.norm(items, axis=-1, keepdims=True)
  targets = np.arange(6)
  # 100 candidates from 6 items: every item competes; a query equal to its
  # target wins exactly when no other item scores higher.
  recall, acc = heldout_retrieval(items[targets], targets, items, 1, 100, 0)
  sim = np.einsum("ike,jle->ijkl", items, items).max((2, 3))
  want = np.mean([sim[i, i] > np.delete(sim[i], i).max() for i in range(6)])
  assert acc == pytest.approx(want)
  assert recall == pytest.approx(
    np.mean([(sim[i] > sim[i, i]).sum() < 1 for i in range(6)])
  )
