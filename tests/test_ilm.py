"""ILM composition: soft tokens land exactly at the slot positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.frozen_llm import char_tokenizer, tiny_llm
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.models.ilm import (
  ItemLanguageModel,
  SoftTokenEncoder,
  word_embedding_rms,
)
from ilm_jax.models.llm import Decoder
from ilm_jax.models.slots import SOFT_PROMPT, WORD
from tests.tiny import CF_DIM, NUM_ITEMS, NUM_USERS
from tests.tiny import MODEL_QCFG as QCFG


@pytest.fixture(scope="module")
def llm():
  config, params, _ = tiny_llm(0)
  return config, params


def _model(llm, variant, soft_prompt=0):
  config, _ = llm
  encoder = SoftTokenEncoder(
    variant,
    config.embed_dim,
    QCFG if variant == "ilm" else None,
    mlp_hidden=12,
    soft_prompt=soft_prompt,
  )
  return ItemLanguageModel(Decoder(config), encoder, NUM_USERS)


def _batch(coding):
  index = random_indexing(NUM_ITEMS)
  enc = PromptEncoder(char_tokenizer(), index, NUM_USERS, coding, 12)
  seq = P.templates(P.SEQUENTIAL, True)[0]
  desc = P.templates(P.DESCRIPTION, True)[0]
  prompts = [
    P.render(seq, user=1, history=[2, 7, 2], answer="item_1001"),
    P.render(desc, item=7, answer="A film."),
    P.render(seq, user=4, history=[0], answer="item_1002"),
  ]
  ex = [enc.encode(p, True) for p in prompts]
  return ex, collate(ex, 160, 12, 12, enc.pad_id)


def _cf():
  rng = np.random.default_rng(0)
  return rng.normal(size=(NUM_USERS + NUM_ITEMS, CF_DIM)).astype(np.float32)


@pytest.mark.parametrize("variant,shared", [("ilm", 0), ("mlp", 0), ("ilm", 2)])
def test_soft_tokens_land_at_slot_positions(llm, variant, shared):
  model = _model(llm, variant, soft_prompt=shared)
  s = model.encoder.tokens_per_entity
  assert s == (3 if variant == "ilm" else 1)
  enc_params = model.init_encoder(jax.random.key(1), CF_DIM)
  enc_params = nn.unbox(enc_params)
  cf = _cf()
  examples, batch = _batch(EntityCoding(s, soft_prompt=shared))
  # each distinct entity once: user 1, user 4, items 0, 2, 7
  rows = [1, 4, NUM_USERS + 0, NUM_USERS + 2, NUM_USERS + 7]
  assert list(batch["entities"][:5]) == rows
  x = np.asarray(
    jax.jit(model.prompt_embeddings)(enc_params, llm[1], cf, batch)
  )
  words = np.asarray(
    model.decoder.apply(
      {"params": llm[1]}, batch["tokens"], method=Decoder.embed
    )
  )
  alone = {}  # each entity encoded on its own, in a batch of one
  for row in rows:
    soft, _ = model.soft_tokens(enc_params, cf, jnp.asarray([row]))
    alone[row] = np.asarray(soft)[0]
  checked = 0
  for r, e in enumerate(examples):
    for t in range(batch["tokens"].shape[1]):
      row = e.slot_entity[t] if t < len(e.tokens) else WORD
      if row == SOFT_PROMPT:  # the shared prompt follows BOS
        assert 1 <= t <= shared
        np.testing.assert_array_equal(
          x[r, t], np.asarray(enc_params["soft_prompt"])[e.slot_query[t]]
        )
        checked += 1
      elif row >= 0:
        # the entity encoded on its own gives the same vector
        np.testing.assert_allclose(
          x[r, t], alone[row][e.slot_query[t]], atol=1e-5
        )
        checked += 1
      else:
        np.testing.assert_array_equal(x[r, t], words[r, t])
  assert checked == s * (1 + 3 + 1 + 1 + 1) + shared * len(examples)


def test_text_variant_soft_prompt_positions(llm):
  model = _model(llm, "text", soft_prompt=4)
  enc_params = nn.unbox(model.init_encoder(jax.random.key(2), CF_DIM))
  examples, batch = _batch(EntityCoding(0, soft_prompt=4))
  x = np.asarray(model.prompt_embeddings(enc_params, llm[1], _cf(), batch))
  prompt = np.asarray(enc_params["soft_prompt"])
  # BOS (this tokenizer adds it), the soft prompt, then the words.
  for r in range(3):
    np.testing.assert_array_equal(x[r, 1:5], prompt)
  words = np.asarray(
    model.decoder.apply(
      {"params": llm[1]}, batch["tokens"], method=Decoder.embed
    )
  )
  np.testing.assert_array_equal(x[:, 0], words[:, 0])
  np.testing.assert_array_equal(x[:, 5:], words[:, 5:])


def test_loss_counts_answer_tokens_only(llm):
  model = _model(llm, "mlp")
  enc_params = nn.unbox(model.init_encoder(jax.random.key(3), CF_DIM))
  examples, batch = _batch(EntityCoding(1))
  frozen = {"llm": llm[1], "cf": _cf()}
  loss, metrics = model.loss(enc_params, frozen, batch)
  answers = sum(len(e.tokens) - e.answer_start for e in examples)
  assert float(metrics["answer_tokens"]) == answers
  assert np.isfinite(float(loss)) and float(loss) > 0
  # the loss reads the answer tokens
  b2 = dict(batch)
  b2["target_tokens"] = batch["target_tokens"].copy()
  b2["target_tokens"][0, 0] = (b2["target_tokens"][0, 0] + 1) % 100
  assert float(model.loss(enc_params, frozen, b2)[0]) != float(loss)


@pytest.mark.parametrize("variant", ["ilm", "mlp", "text"])
def test_soft_tokens_start_at_the_scale_of_word_embeddings(llm, variant):
  config, params = llm
  decoder = Decoder(config)
  rms = word_embedding_rms(decoder, params)
  table = np.asarray(params["embedding"], np.float32)
  np.testing.assert_allclose(rms, np.sqrt(np.mean(table**2)), rtol=0.05)
  target = 0.05  # far from 1.0, the scale a plain initialisation gives
  encoder = SoftTokenEncoder(
    variant,
    config.embed_dim,
    QCFG if variant == "ilm" else None,
    mlp_hidden=64,
    soft_prompt=4,
    token_rms=target,
  )
  cf = jax.random.normal(jax.random.key(1), (32, CF_DIM))
  types = jnp.arange(32) % 2
  variables = encoder.init(jax.random.key(0), cf, types)
  soft, prompt = encoder.apply(variables, cf, types)
  out = prompt if variant == "text" else soft
  measured = float(jnp.sqrt(jnp.mean(jnp.square(out))))
  # The MLP's GELU halves its hidden variance, so allow a factor of ~2.
  assert target / 2.5 < measured < target * 1.5, measured
