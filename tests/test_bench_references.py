"""The benchmarks' PyTorch references and FLOP counts, on tiny models.

``launch/torch_reference.py`` must compute what ours computes at the same
weights (the benchmarks time it as "the same step"), and ``ilm_jax.mfu``
must count what a hand count gives. No timing is asserted.
"""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT
from flax import linen as nn

from ilm_jax import mfu
from ilm_jax.convert.frozen_llm import char_tokenizer, tiny_llm
from ilm_jax.data import prompts as P
from ilm_jax.data.indexing import random_indexing
from ilm_jax.data.stage2.collate import collate
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.experiment_config import loop_config
from ilm_jax.models.ilm import ItemLanguageModel, SoftTokenEncoder
from ilm_jax.models.llm import Decoder
from tests.tiny import CF_DIM, MODEL_QCFG, NUM_USERS

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
sys.path.insert(0, str(REPO_ROOT / "launch"))
import torch_reference as R  # noqa: E402

NUM_ITEMS = 30
SOFT_PROMPT = 2
LIST_TOKENS = 1  # the K = 3 query outputs pooled into one per listed item
# Both batch kinds share one shape (length, targets, entities), so our
# loss compiles once.
_SHAPE = (192, 12, 12)
_CANDIDATES = dict(num_candidates=3, answer_length=12)


@pytest.fixture(scope="module")
def setup():
  config, llm_params, _ = tiny_llm(0)
  encoder = SoftTokenEncoder(
    "ilm", config.embed_dim, MODEL_QCFG, soft_prompt=SOFT_PROMPT
  )
  model = ItemLanguageModel(
    Decoder(config),
    encoder,
    NUM_USERS,
    list_tokens=LIST_TOKENS,
    answer_weighting="example",
  )
  params = nn.unbox(model.init_encoder(jax.random.key(1), CF_DIM))
  coding = EntityCoding(
    MODEL_QCFG.num_queries,
    soft_prompt=SOFT_PROMPT,
    list_tokens=LIST_TOKENS,
    candidate_labels="identifiers",
  )
  enc = PromptEncoder(
    char_tokenizer(), random_indexing(NUM_ITEMS, seed=3), NUM_USERS, coding, 12
  )
  cf = np.random.default_rng(0).normal(size=(NUM_USERS + NUM_ITEMS, CF_DIM))
  cf = cf.astype(np.float32)
  theirs = R.SoftTokens(MODEL_QCFG, config.embed_dim, SOFT_PROMPT)
  paths = R.load_encoder_params(theirs, params)
  train = loop_config()
  step = R.Stage2Step(
    R.llama_from_params(config, llm_params),
    theirs,
    paths,
    NUM_USERS,
    cf,
    LIST_TOKENS,
    "example",
    train,
  )
  return model, params, llm_params, cf, enc, step


def _rerank_prompts():
  tpl = P.templates(P.RERANK, True)[0]
  return [
    P.render(tpl, user=1, history=[3, 9], candidates=[5, 17, 2], target_item=2),
    P.render(tpl, user=4, history=[8], candidates=[1, 22, 7], target_item=22),
  ]


def _plain_batch(enc):
  seq = P.templates(P.SEQUENTIAL, True)[0]
  desc = P.templates(P.DESCRIPTION, True)[0]
  prompts = [
    P.render(seq, user=1, history=[2, 7, 2], answer="item_1001"),
    P.render(desc, item=7, answer="A film."),
  ]
  encoded = [enc.encode(p, True) for p in prompts]
  return collate(encoded, *_SHAPE, enc.pad_id, **_CANDIDATES)


def _rerank_batch(enc):
  encoded = [enc.encode(p, True) for p in _rerank_prompts()]
  return collate(encoded, *_SHAPE, enc.pad_id, **_CANDIDATES)


@pytest.mark.parametrize("kind", ["plain", "rerank"])
def test_torch_step_has_our_loss_and_gradient_at_our_weights(setup, kind):
  model, params, llm_params, cf, enc, step = setup
  batch = _plain_batch(enc) if kind == "plain" else _rerank_batch(enc)
  frozen = {"llm": llm_params, "cf": cf}
  loss_and_grad = jax.jit(jax.value_and_grad(model.loss, has_aux=True))
  (ours, metrics), grads = loss_and_grad(params, frozen, batch)
  if kind == "rerank":  # the packed rows' softmax over candidates counts
    assert float(metrics["rerank_rows"]) == 2.0
  else:
    assert float(metrics["answer_tokens"]) > 0
  step.encoder.zero_grad(set_to_none=True)
  theirs = step.loss(R.to_torch(batch))
  theirs.backward()
  np.testing.assert_allclose(theirs.item(), float(ours), rtol=1e-5)
  # The gradient reached the encoder through the frozen LLM, alike.
  np.testing.assert_allclose(
    step.encoder.adapter.weight.grad.numpy().T,
    np.asarray(grads["adapter"]["kernel"]),
    rtol=1e-3,
    atol=1e-6,
  )
  assert all(p.grad is None for p in step.llm.parameters())


def test_torch_step_updates_only_the_encoder(setup):
  *_, enc, step = setup
  batch = R.to_torch(_rerank_batch(enc))
  before = {k: v.clone() for k, v in step.encoder.state_dict().items()}
  llm_before = step.llm.lm_head.weight.clone()
  loss = step.step(batch, learning_rate=1e-3)
  assert np.isfinite(loss)
  after = step.encoder.state_dict()
  assert not torch.equal(before["adapter.weight"], after["adapter.weight"])
  assert torch.equal(llm_before, step.llm.lm_head.weight)
  # Restore: the module-scoped reference must stay at our weights.
  step.encoder.load_state_dict(before)


def test_naive_candidate_scores_equal_our_packed_scores(setup):
  model, params, llm_params, cf, enc, step = setup
  encoded = [enc.encode(p, False) for p in _rerank_prompts()]
  batch = collate(
    encoded, *_SHAPE, enc.pad_id, with_answer=False, **_CANDIDATES
  )
  ours = jax.jit(model.candidate_scores)(params, llm_params, cf, batch)
  x = jax.jit(model.prompt_embeddings)(params, llm_params, cf, batch)
  x = np.asarray(x)
  prompts = [
    torch.tensor(x[r, : e.answer_start]) for r, e in enumerate(encoded)
  ]
  with torch.inference_mode():
    theirs = R.naive_candidate_scores(
      step.llm, prompts, [e.cand_tokens for e in encoded]
    ).numpy()
  np.testing.assert_allclose(theirs, np.asarray(ours), rtol=1e-5, atol=1e-5)


def test_flop_counts_match_a_hand_count():
  config, _, _ = tiny_llm(0)
  # Tiny LLM: D = 32, 4 heads and 2 KV heads of 8, MLP 64, 2 layers, V 128.
  d, f, layers, vocab = 32, 64, 2, 128
  per_token = 2 * (d * 32 + 2 * d * 16 + 32 * d + 3 * d * f)
  b, length = 3, 10
  attention = b * length * layers * (2 * 2 * length * 32)
  forward = mfu.decoder_forward(config, b, length)
  assert forward.weights == b * length * layers * per_token
  assert forward.attention == attention
  # Q-Former of tests/tiny.py: Dq 16, K 3, T 2, d 8, FFN 32, 2 layers,
  # cross-attention in layer 0 only; adapter 16 -> 32.
  dq, k, t = 16, 3, 2
  layer = 2 * 4 * k * dq * dq + 2 * 2 * k * dq * 32
  cross = 2 * 2 * k * dq * dq + 2 * 2 * t * dq * dq
  weights = 2 * 8 * t * dq + 2 * k * dq * d + 2 * layer + cross
  q_attention = 2 * (2 * 2 * k * k * dq) + 2 * 2 * k * t * dq
  entities, logits = 5, 4
  q = mfu.qformer_forward(MODEL_QCFG, entities, d)
  assert (q.weights, q.attention) == (
    entities * weights,
    entities * q_attention,
  )
  head = 2 * b * logits * d * vocab
  # Frozen LLM: forward + input gradients (weights 1x, attention 2x,
  # head 1x); the encoder trains: 3x.
  expected = (
    2 * forward.weights
    + 3 * attention
    + 2 * head
    + 3 * entities * (weights + q_attention)
  )
  got = mfu.stage2_step_flops(
    config,
    MODEL_QCFG,
    batch=b,
    length=length,
    entities=entities,
    logit_positions=logits,
  )
  assert got == expected
  # Decoding 2 tokens after 10: contexts 11 and 12, logits at each.
  decode = mfu.decode_flops(config, 1, 10, 2)
  assert decode == 2 * layers * per_token + layers * 4 * 32 * (11 + 12) + (
    2 * 2 * d * vocab
  )


def test_matmul_peak_is_measured_on_this_device():
  peak = mfu.measure_matmul_peak(repeats=1)
  assert peak.gflops > 0 and peak.size >= 512
  assert peak.dtype == "float32"
  got = mfu.utilisation(2e9, 1.0, peak)
  assert got["gflops"] == 2.0
  assert got["mfu"] == pytest.approx(2.0 / peak.gflops)


def test_generate_mode_compares_beam_search_with_transformers(tmp_path):
  """``bench_stage2.py --generate`` end to end on the tiny random LLM, with
  the accelerator recipe's collaborative identifiers (balanced tree): both
  searches ran, and returned the same top item for every prompt."""
  out = subprocess.run(
    [
      sys.executable,
      str(REPO_ROOT / "launch" / "bench_stage2.py"),
      "--config=configs/default.py:small",
      "--config.stage2.llm=tiny",
      "--config.dataset.indexing=collaborative",
      "--config.stage2.eval.batch_size=4",
      "--config.stage2.eval.num_beams=3",
      "--generate",
      "--steps=1",
      "--torch_threads=1",
      f"--workdir={tmp_path}",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "bench_generate.json").read_text())
  assert result["config"]["batch_size"] == 4
  assert result["config"]["num_beams"] == 3
  assert result["config"]["identifiers"] > 100
  assert result["ours"]["batch"] > 0 and result["torch"]["1"]["batch"] > 0
  parity = result["parity"]["1"]
  assert parity["top_item_agrees"] == [True] * 4
  assert parity["max_top_score_diff"] < 1e-3
  assert result["ratio"] > 0
  assert out.stdout.strip().splitlines()[-1].startswith("ratio ")
