"""Retrieval head: in-batch softmax, batch targets, query position, ranking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.frozen_llm import tiny_llm
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.eval import retrieval
from ilm_jax.eval.metrics import metrics_from_ranks
from ilm_jax.models.ilm import ItemLanguageModel, SoftTokenEncoder
from ilm_jax.models.llm import Decoder
from ilm_jax.models.retrieval_head import HEAD_KEY, in_batch_softmax_loss
from tests.tiny import CF_DIM, NUM_ITEMS, NUM_USERS
from tests.tiny import MODEL_QCFG as QCFG


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_in_batch_softmax_loss_matches_numpy():
  rng = np.random.default_rng(0)
  q, k = _unit(rng.normal(size=(4, 6))), _unit(rng.normal(size=(5, 6)))
  target = np.array([2, -1, 0, 2])
  candidate = np.array([True, False, True, True, True])
  loss, m = in_batch_softmax_loss(
    jnp.asarray(q), jnp.asarray(k), jnp.float32(0.1), target, candidate
  )
  logits = q @ k.T / 0.1
  logits[:, ~candidate] = -np.inf
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  rows = target >= 0
  expect = -logp[rows, target[rows]].mean()
  np.testing.assert_allclose(float(loss), expect, rtol=1e-5)
  assert float(m["retrieval_rows"]) == 3
  acc = np.mean(np.argmax(logits[rows], 1) == target[rows])
  np.testing.assert_allclose(float(m["retrieval_accuracy"]), acc)


def _encoder():
  _, _, tok = tiny_llm(0)
  index = random_indexing(NUM_ITEMS)
  return PromptEncoder(tok, index, NUM_USERS, EntityCoding(3), 12)


def _prompts(index):
  seq = P.templates(P.SEQUENTIAL, True)[0]
  desc = P.templates(P.DESCRIPTION, True)[0]
  return [
    P.render(
      seq, user=1, history=[2, 7], answer=index.identifier(4), target_item=4
    ),
    P.render(desc, item=7, answer="A film."),
    P.render(
      seq, user=3, history=[0], answer=index.identifier(7), target_item=7
    ),
  ]


def test_collate_adds_target_items_as_candidates():
  enc = _encoder()
  ex = [enc.encode(p, True) for p in _prompts(enc.item_index)]
  batch = collate(
    ex, 160, 12, 12, enc.pad_id, retrieval_targets=True, num_users=NUM_USERS
  )
  ents, target = batch["entities"], batch["target_entity"]
  assert ents[target[0]] == NUM_USERS + 4  # not in any prompt: added
  assert ents[target[2]] == NUM_USERS + 7  # also in the history of row 0
  assert target[1] == -1  # text task
  cand = batch["entity_is_candidate"]
  # distinct item rows only: users 1 and 3 and the padding are excluded
  assert sorted(ents[cand]) == sorted(NUM_USERS + np.array([0, 2, 4, 7]))
  # without the switch the target (item 4) is not encoded
  plain = collate(ex, 160, 12, 12, enc.pad_id)
  assert NUM_USERS + 4 not in plain["entities"] and "target_entity" not in plain
  with pytest.raises(ValueError, match="num_users"):
    collate(ex, 160, 12, 12, enc.pad_id, retrieval_targets=True)


@pytest.fixture(scope="module")
def model_and_params():
  config, llm_params, _ = tiny_llm(0)
  encoder = SoftTokenEncoder("ilm", config.embed_dim, QCFG)
  model = ItemLanguageModel(Decoder(config), encoder, NUM_USERS, 0.5)
  params = nn.unbox(model.init_encoder(jax.random.key(0), CF_DIM))
  cf = np.random.default_rng(1).normal(size=(NUM_USERS + NUM_ITEMS, CF_DIM))
  return model, params, llm_params, cf.astype(np.float32)


def test_loss_adds_weighted_retrieval_term_and_trains_the_head(
  model_and_params,
):
  model, params, llm_params, cf = model_and_params
  enc = _encoder()
  ex = [enc.encode(p, True) for p in _prompts(enc.item_index)]
  batch = collate(
    ex, 160, 12, 12, enc.pad_id, retrieval_targets=True, num_users=NUM_USERS
  )
  frozen = {"llm": llm_params, "cf": cf}
  (loss, m), grads = jax.jit(jax.value_and_grad(model.loss, has_aux=True))(
    params, frozen, batch
  )
  np.testing.assert_allclose(
    float(loss),
    float(m["generative_loss"]) + 0.5 * float(m["retrieval_loss"]),
    rtol=1e-6,
  )
  assert float(m["retrieval_rows"]) == 2
  head = grads[HEAD_KEY]
  assert float(jnp.abs(head["query_proj"]["kernel"]).sum()) > 0
  assert float(jnp.abs(head["log_temperature"])) > 0
  # the item side of the loss reaches the adapter too
  assert float(jnp.abs(grads["adapter"]["kernel"]).sum()) > 0
  # the same model without the head has no such params or metrics
  plain = ItemLanguageModel(model.decoder, model.encoder, NUM_USERS)
  assert HEAD_KEY not in plain.init_encoder(jax.random.key(0), CF_DIM)
  _, m0 = jax.jit(plain.loss)(
    {k: v for k, v in params.items() if k != HEAD_KEY}, frozen, batch
  )
  assert "retrieval_loss" not in m0
  np.testing.assert_allclose(
    float(m0["token_accuracy"]), float(m["token_accuracy"])
  )


def test_eval_queries_read_the_position_training_reads(model_and_params):
  """Causal attention: the answer never changes the last prompt state."""
  model, params, llm_params, cf = model_and_params
  enc = _encoder()
  prompts = _prompts(enc.item_index)
  train = collate(
    [enc.encode(p, True) for p in prompts], 160, 12, 12, enc.pad_id
  )
  evalb = collate(
    [enc.encode(p, False) for p in prompts],
    128,
    1,
    12,
    enc.pad_id,
    with_answer=False,
  )
  queries = model.retrieval_queries(params, llm_params, cf, evalb)
  x = model.prompt_embeddings(params, llm_params, cf, train)
  hidden = model.decoder.apply(
    {"params": llm_params}, embeddings=x, input_mask=train["input_mask"]
  ).hidden
  at = train["target_positions"][:, 0]
  expect, _ = model.head.apply(
    {"params": params[HEAD_KEY]}, hidden[np.arange(3), at]
  )
  np.testing.assert_allclose(queries, expect, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)


def test_catalogue_vectors_are_per_item_mean_soft_tokens(model_and_params):
  model, params, _, cf = model_and_params
  vecs = retrieval.catalogue_vectors(model, params, cf, NUM_ITEMS)
  assert vecs.shape == (NUM_ITEMS, model.decoder.config.embed_dim)
  rows = NUM_USERS + np.arange(NUM_ITEMS)
  soft, _ = model.soft_tokens(params, cf, rows)
  np.testing.assert_allclose(vecs, _unit(np.asarray(soft).mean(1)), atol=1e-5)


def test_retrieval_metrics_match_brute_force_ranks():
  rng = np.random.default_rng(3)
  q, items = rng.normal(size=(7, 4)), rng.normal(size=(30, 4))
  targets = rng.integers(0, 30, 7)
  seen = [rng.choice(30, 5, replace=False) for _ in range(7)]
  got = retrieval.retrieval_metrics(q, items, targets, seen)
  scores = q @ items.T
  for name, drop in (("unfiltered", False), ("filtered", True)):
    ranks = []
    for n in range(7):
      s = scores[n].copy()
      if drop:
        s[[i for i in seen[n] if i != targets[n]]] = -np.inf
      ranks.append(int(np.sum(s > s[targets[n]])))
    for key, value in metrics_from_ranks(np.array(ranks)).items():
      assert got[f"{name}/{key}"] == pytest.approx(value), (name, key)
