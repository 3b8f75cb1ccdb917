"""Re-ranking: one packed forward pass scores every candidate exactly."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.frozen_llm import char_tokenizer, tiny_llm
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import Encoded, EntityCoding, PromptEncoder
from ilm_jax.models.bert import BertConfig
from ilm_jax.models.ilm import ItemLanguageModel, SoftTokenEncoder
from ilm_jax.models.llm import Decoder
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.slots import WORD

NUM_USERS, NUM_ITEMS, CF_DIM = 5, 40, 8
QCFG = QFormerConfig(
  bert=BertConfig(
    vocab_size=32,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
  ),
  num_queries=4,
  num_cf_tokens=2,
  cf_dim=CF_DIM,
)


@pytest.fixture(scope="module")
def llm():
  config, params, _ = tiny_llm(0)
  return config, params


def _setup(llm, labels, list_tokens):
  config, _ = llm
  encoder = SoftTokenEncoder("ilm", config.embed_dim, QCFG)
  model = ItemLanguageModel(
    Decoder(config), encoder, NUM_USERS, list_tokens=list_tokens
  )
  params = nn.unbox(model.init_encoder(jax.random.key(1), CF_DIM))
  coding = EntityCoding(4, list_tokens=list_tokens, candidate_labels=labels)
  enc = PromptEncoder(
    char_tokenizer(), random_indexing(NUM_ITEMS, seed=3), NUM_USERS, coding, 12
  )
  cf = np.random.default_rng(0).normal(size=(NUM_USERS + NUM_ITEMS, CF_DIM))
  return model, params, enc, cf.astype(np.float32)


def _prompts():
  tpl = P.templates(P.RERANK, True)[0]
  conv = P.templates(P.RERANK_CONVERSATIONAL, False)[1]
  return [
    P.render(
      tpl, user=1, history=[3, 9], candidates=[5, 17, 2, 30, 11], target_item=2
    ),
    P.render(
      conv,
      history=[4],
      wish="something funny",
      candidates=[8, 1, 22],
      target_item=0,
    ),
  ]


def _naive_scores(model, params, llm_params, cf, enc, encoded):
  """Per candidate: prompt + its answer, teacher-forced, one at a time."""
  out = []
  for e in encoded:
    row = []
    for tok in e.cand_tokens:
      n = e.answer_start
      plain = Encoded(
        tokens=np.concatenate([e.tokens[:n], tok]),
        slot_entity=np.concatenate(
          [e.slot_entity[:n], np.full(len(tok), WORD, np.int32)]
        ),
        slot_query=np.concatenate(
          [e.slot_query[:n], np.zeros(len(tok), np.int32)]
        ),
        answer_start=n,
      )
      batch = collate([plain], 320, 16, 16, enc.pad_id)
      x = model.prompt_embeddings(params, llm_params, cf, batch)
      logits = model.decoder.apply(
        {"params": llm_params}, embeddings=x, input_mask=batch["input_mask"]
      ).logits[0]
      logp = jax.nn.log_softmax(logits, axis=-1)
      at = n - 1 + np.arange(len(tok))
      row.append(float(jnp.sum(logp[at, tok])))
    out.append(row)
  return out


@pytest.mark.parametrize(
  "labels,list_tokens", [("identifiers", 0), ("identifiers", 2), ("letters", 1)]
)
def test_packed_scores_equal_per_candidate_likelihood(llm, labels, list_tokens):
  model, params, enc, cf = _setup(llm, labels, list_tokens)
  encoded = [enc.encode(p, with_answer=False) for p in _prompts()]
  if labels == "identifiers":
    # " item_" is shared by every identifier: fed once, not per candidate.
    assert len(encoded[0].cand_logits_at[0]) > 1
    shared = encoded[0].segment == 0
    assert shared.sum() > encoded[0].answer_start
  batch = collate(
    encoded,
    320,
    1,
    32,
    enc.pad_id,
    with_answer=False,
    num_candidates=6,
    answer_length=12,
  )
  _, llm_params = llm
  packed = np.asarray(
    jax.jit(model.candidate_scores)(params, llm_params, cf, batch)
  )
  naive = _naive_scores(model, params, llm_params, cf, enc, encoded)
  for r, row in enumerate(naive):
    np.testing.assert_allclose(packed[r, : len(row)], row, rtol=1e-5, atol=1e-5)
    assert np.all(np.isneginf(packed[r, len(row) :]))  # padding candidates
  # The labels are what the answers name.
  assert encoded[0].label == 2 and encoded[1].label == -1


def test_packed_forward_is_shorter_than_one_pass_per_candidate(llm):
  _, _, enc, _ = _setup(llm, "identifiers", 2)
  e = enc.encode(_prompts()[0], with_answer=False)
  per_candidate = sum(e.answer_start + len(t) for t in e.cand_tokens)
  assert len(e.tokens) < per_candidate / 3


def test_rerank_loss_is_softmax_over_candidate_scores(llm):
  model, params, enc, cf = _setup(llm, "letters", 2)
  encoded = [enc.encode(p, with_answer=True) for p in _prompts()]
  batch = collate(
    encoded, 320, 1, 32, enc.pad_id, num_candidates=5, answer_length=3
  )
  _, llm_params = llm
  frozen = {"llm": llm_params, "cf": cf}
  loss, metrics = model.loss(params, frozen, batch)
  scores = model.candidate_scores(params, llm_params, cf, batch)
  # Only the first prompt has its target among the candidates (label 2).
  expected = -jax.nn.log_softmax(scores[0])[2]
  np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
  assert float(metrics["rerank_rows"]) == 1.0
  grads = jax.grad(lambda p: model.loss(p, frozen, batch)[0])(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads))
