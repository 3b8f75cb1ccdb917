"""Re-ranking training lists from an inner SASRec, and lists shared between
inner retrievers."""

import ml_collections
import numpy as np
import pytest

from ilm_jax.data import load_split
from ilm_jax.data import prompts as P
from ilm_jax.pipeline import sasrec as sasrec_stage
from ilm_jax.rerank import candidates as C
from ilm_jax.rerank import inner_sasrec
from ilm_jax.rerank import stage as rerank
from ilm_jax.train.provenance import ProvenanceError
from tests.tiny import sasrec_tiny_config

HOLDOUT, LENGTH = 3, 12


def _config():
  config, scfg = sasrec_tiny_config(num_steps=4, checkpoint_every=4)
  config.sasrec = scfg
  return config


@pytest.fixture(scope="module")
def split():
  return load_split(_config().dataset)


def test_inner_split_cuts_each_sequence_as_the_inner_als_does(split):
  inner, held = inner_sasrec.inner_sequence_split(split, HOLDOUT)
  users, items, als_held = C.inner_split(split, HOLDOUT)
  assert held == als_held
  np.testing.assert_array_equal(np.concatenate(inner.train_sequences), items)
  for u, seq in enumerate(split.train_sequences):
    cut = max(1, len(seq) - HOLDOUT)
    np.testing.assert_array_equal(inner.train_sequences[u], seq[:cut])
    # Its validation item is the first held-out one: never trained on.
    want = seq[cut] if cut < len(seq) else split.valid_items[u]
    assert inner.valid_items[u] == want
  # Every listed target lies past its user's inner sequence.
  for u, t in held:
    assert t >= len(inner.train_sequences[u])


def test_sasrec_lists_every_held_out_position_without_earlier_items(
  split, tmp_path
):
  config = _config()
  lists, info = inner_sasrec.training_lists(
    config, split, HOLDOUT, LENGTH, tmp_path
  )
  _, _, held = C.inner_split(split, HOLDOUT)
  assert info["positions"] == len(held) == len(lists.targets)
  assert lists.ranked.shape == (len(held), LENGTH)
  for row, (u, t) in enumerate(held):
    seq = split.train_sequences[u]
    assert lists.users[row] == u and lists.targets[row] == seq[t]
    np.testing.assert_array_equal(lists.histories[row], seq[:t])
    assert not np.isin(lists.ranked[row], seq[:t]).any()
  # The lists are the trained model's top items after each history: the
  # finished state resumes without a step and scores them again.
  inner, _ = inner_sasrec.inner_sequence_split(split, HOLDOUT)
  model, params, _ = sasrec_stage.train_sasrec(
    config,
    config.sasrec,
    inner,
    tmp_path / inner_sasrec.STAGE_DIR,
    extra_provenance={"inner_holdout": HOLDOUT},
  )
  for row in (0, len(held) // 2, len(held) - 1):
    scores = sasrec_stage.history_scores(model, params, lists.histories[row])
    scores[lists.histories[row]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:LENGTH]
    np.testing.assert_array_equal(np.sort(top), np.sort(lists.ranked[row]))
  # Another cut in the same workdir is refused, not resumed.
  with pytest.raises(ProvenanceError, match="inner_holdout"):
    inner_sasrec.training_lists(config, split, HOLDOUT + 1, LENGTH, tmp_path)


def _stage2(retrievers, examples=12):
  c = ml_collections.ConfigDict()
  c.tasks = (P.RERANK,)
  c.max_history = 5
  c.rerank = ml_collections.ConfigDict()
  c.rerank.num_candidates = 4
  c.rerank.train_holdout = HOLDOUT
  c.rerank.examples_per_task = examples
  c.rerank.order = "retriever"
  c.rerank.retriever = "als"
  c.rerank.train_retrievers = retrievers
  return c


def test_training_prompts_share_the_examples_between_retrievers(
  split, monkeypatch
):
  def fake(name, shift):
    def lists(holdout, length):
      assert (holdout, length) == (HOLDOUT, 10)
      _, _, held = C.inner_split(split, holdout)
      users, hist, targets = C.held_examples(split, held)
      ranked = np.stack(
        [np.roll(np.arange(length, dtype=np.int32) + 5000, shift)] * len(held)
      )
      ranked[:, shift] = targets  # every list holds its target at `shift`
      return C.CandidateLists(users, hist, targets, ranked), {
        f"inner_{name}_seconds": 1.0,
        "positions": len(held),
      }

    return lists

  monkeypatch.setattr(C, "training_lists", lambda *a: fake("als", 0)(*a[2:4]))
  inner = {"sasrec": fake("sasrec", 2)}
  prompts, stats = rerank.training_prompts(
    _stage2(("als", "sasrec")), split, None, (10,), 0, inner=inner
  )
  assert len(prompts) == 12
  # Half the prompts from each retriever's lists (the target's place).
  assert stats["lists"]["rank_1-5"] == stats["lists_sasrec"]["rank_1-5"] == 1
  assert stats["lists"]["rank_mean"] == 1 and stats["lists_sasrec"][
    "rank_mean"
  ] == pytest.approx(3)
  first = sum(p.candidates[0] == p.target_item for p in prompts)
  third = sum(p.candidates[2] == p.target_item for p in prompts)
  assert first == third == 6
  assert stats["usable_lists"] == 2 * stats["positions"]
  # One retriever: all the examples from it, as before the field.
  alone, _ = rerank.training_prompts(
    _stage2(("als",)), split, None, (10,), 0, inner=inner
  )
  assert len(alone) == 12
  assert all(p.candidates[0] == p.target_item for p in alone)


@pytest.mark.parametrize("names", [(), ("als", "als"), ("als", "bm25")])
def test_unknown_or_repeated_train_retrievers_are_refused(names):
  c = _stage2(names)
  c.retrieval_weight = 0.0
  with pytest.raises(ValueError, match="train_retrievers"):
    rerank.check_config(c)
