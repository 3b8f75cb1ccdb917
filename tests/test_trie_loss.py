"""Identifier answers scored over the trie's allowed tokens in training."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.frozen_llm import tiny_llm
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import (
  EntityCoding,
  PromptEncoder,
  encode_fitting,
)
from ilm_jax.data.stage2.sampling import training_prompts
from ilm_jax.decode.item_trie import build_item_trie
from ilm_jax.models.ilm import ItemLanguageModel, SoftTokenEncoder
from ilm_jax.models.llm import Decoder
from ilm_jax.objectives.trie_loss import answer_token_nll, walk_answers
from ilm_jax.pipeline import stage2
from tests.tiny import STAGE2_QCFG as QCFG
from tests.tiny import (
  spy_on_training_inputs,
  stage2_config,
  write_random_cf_table,
)

EOS, VOCAB = 0, 12
# Three identifiers over the alphabet {0, 5, 6, 7, 1, 2, 3}: a forced first
# token (5), then a branch (6 / 7), then the last digit, then EOS.
SEQUENCES = [[5, 6, 1, EOS], [5, 6, 2, EOS], [5, 7, 3, EOS]]


def _trie():
  return build_item_trie(SEQUENCES, VOCAB)


def _reference_nll(logits, answer):
  """-log p(token) under a softmax over the tokens that continue some
  identifier after the tokens before it, written out per position."""
  out = []
  for t, token in enumerate(answer):
    prefix = list(answer[:t])
    allowed = sorted(
      {s[t] for s in SEQUENCES if len(s) > t and s[:t] == prefix}
    )
    z = np.log(np.exp(logits[t, allowed]).sum())
    out.append(z - logits[t, token])
  return np.asarray(out)


def test_identifier_answers_use_the_softmax_over_allowed_tokens():
  trie = _trie()
  rng = np.random.default_rng(0)
  answers = [SEQUENCES[1], SEQUENCES[2], [9, 4, 1, EOS], [5, 6]]
  targets = np.zeros((4, 5), np.int32)
  mask = np.zeros((4, 5), bool)
  for r, a in enumerate(answers):
    targets[r, : len(a)] = a
    mask[r, : len(a)] = True
  logits = rng.normal(size=(4, 5, VOCAB)).astype(np.float32)
  nll, correct, on_trie = answer_token_nll(
    jnp.asarray(logits), targets, mask, trie.loss_data
  )
  nll, correct = np.asarray(nll), np.asarray(correct)
  # Whole identifiers are on the trie; text and a cut-off identifier are not.
  np.testing.assert_array_equal(on_trie, [True, True, False, False])
  for r in (0, 1):
    np.testing.assert_allclose(
      nll[r, :4], _reference_nll(logits[r], answers[r]), rtol=1e-5, atol=1e-6
    )
    # The shared first token and the EOS after a full code are forced.
    assert nll[r, 0] == pytest.approx(0.0, abs=1e-6)
    assert nll[r, 3] == pytest.approx(0.0, abs=1e-6)
    assert correct[r, 0] == correct[r, 3] == 1.0
  # Other rows keep the full-vocabulary softmax.
  full = -jax.nn.log_softmax(logits, axis=-1)
  for r in (2, 3):
    np.testing.assert_allclose(
      nll[r],
      np.take_along_axis(full[r], targets[r, :, None], 1)[:, 0],
      rtol=1e-5,
    )
  # Without a trie every row is scored over the vocabulary.
  plain, _, none = answer_token_nll(jnp.asarray(logits), targets, mask)
  assert not np.asarray(none).any()
  # A restricted softmax never scores a token worse than the full one.
  assert np.all(nll[:2][mask[:2]] <= np.asarray(plain)[:2][mask[:2]] + 1e-6)


def test_walk_marks_where_each_answer_leaves_the_trie():
  trie = _trie()
  targets = np.array([[5, 7, 3, EOS], [5, 9, 1, EOS]], np.int32)
  nodes, spells = walk_answers(
    jnp.asarray(targets), np.ones((2, 4), bool), trie.loss_data
  )
  nodes = np.asarray(nodes)
  assert nodes[0, 0] == nodes[1, 0] == 0  # every answer starts at the root
  assert (nodes[0] >= 0).all()
  assert nodes[1, 1] >= 0 and (nodes[1, 2:] == -1).all()  # 9 leaves it
  np.testing.assert_array_equal(spells, [True, False])


def test_padding_positions_leave_the_gradient_finite():
  trie = _trie()
  targets = np.array([[5, 6, 1, EOS, 0, 0]], np.int32)
  mask = np.array([[True] * 4 + [False] * 2])

  def loss(logits):
    nll, _, _ = answer_token_nll(logits, targets, mask, trie.loss_data)
    return (nll * mask).sum()

  grad = jax.grad(loss)(jnp.zeros((1, 6, VOCAB)))
  assert np.isfinite(np.asarray(grad)).all()
  # Only the branching positions (6 vs 7, then 1 vs 2) have a gradient, and
  # only on the tokens the trie allows there.
  moved = np.abs(np.asarray(grad[0])) > 0
  assert moved[[0, 3, 4, 5]].sum() == 0
  assert set(np.flatnonzero(moved[1])) == {6, 7}
  assert set(np.flatnonzero(moved[2])) == {1, 2}


def test_model_loss_restricts_identifier_rows_only(toy_split):
  llm_config, llm_params, tok = tiny_llm(0)
  split = toy_split
  index = random_indexing(split.num_items)
  encoder = SoftTokenEncoder("ilm", llm_config.embed_dim, QCFG)
  model = ItemLanguageModel(
    Decoder(llm_config), encoder, split.num_users, answer_weighting="token"
  )
  params = nn.unbox(model.init_encoder(jax.random.key(0), 8))
  enc = PromptEncoder(tok, index, split.num_users, EntityCoding(2))
  prompts = training_prompts(
    split, index, (P.SEQUENTIAL, P.DESCRIPTION, P.IDENTIFY), 3, 3
  )
  examples = [encode_fitting(enc, p, 256, True) for p in prompts]
  batch = collate(examples, 256, 16, 64, enc.pad_id)
  trie = stage2.build_trie(enc, llm_config.vocab_size)
  cf = np.random.default_rng(0).normal(size=(18, 8)).astype(np.float32)
  frozen = {"llm": llm_params, "cf": cf}
  with_trie = {**frozen, "trie": trie.loss_data}
  loss = jax.jit(model.loss)
  plain, plain_metrics = loss(params, frozen, batch)
  restricted, metrics = loss(params, with_trie, batch)
  item_rows = sum(p.task != P.DESCRIPTION for p in prompts)
  assert 0 < item_rows < len(prompts)
  assert float(metrics["trie_answers"]) == item_rows
  assert "trie_answers" not in plain_metrics
  # Restricting a softmax to a set holding the target only lowers its nll.
  assert float(restricted) < float(plain)
  grads = jax.jit(jax.grad(lambda p: model.loss(p, with_trie, batch)[0]))(
    params
  )
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_stage2_hands_the_trie_to_training_when_asked(tmp_path, monkeypatch):
  seen = spy_on_training_inputs(monkeypatch)
  config = stage2_config(
    trie_loss=True,
    tasks=(P.SEQUENTIAL, P.IDENTIFY, P.DESCRIPTION),
    evaluations=("generate:sequential:valid:unseen",),
  )
  config.stage2.train.num_steps = 2
  config.stage2.train.checkpoint_every = 2
  write_random_cf_table(config, tmp_path)
  results = stage2.run(config, tmp_path)
  assert set(seen["frozen"]["trie"]) == {
    "transitions",
    "column_of_token",
    "item_at_node",
    "alphabet",
  }
  assert results["train"]["trie_answers"] > 0
  assert np.isfinite(results["train"]["loss"])
