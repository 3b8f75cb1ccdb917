"""The Flax decoder against transformers' PyTorch models on tiny random configs.

Each family's reference model is created from a tiny config, saved with
``save_pretrained`` as safetensors, read back by our loader (no torch) and
compared logit by logit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ilm_jax.convert.hf_params import load_hf_checkpoint  # noqa: E402
from ilm_jax.models.llm import Decoder, init_cache  # noqa: E402

VOCAB = 97
TOLERANCE = 1e-4
_COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=32,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  head_dim=8,
  # Large enough weights that logits are O(1) and a bug cannot hide in 1e-4.
  initializer_range=0.15,
)


def _hf_models():
  t = transformers
  return {
    # Llama-3 RoPE scaling with a short original context so that all three
    # frequency bands (kept, interpolated, scaled) occur at head_dim 8.
    "llama": (
      t.LlamaForCausalLM,
      t.LlamaConfig(
        **_COMMON,
        rope_parameters=dict(
          rope_type="llama3",
          rope_theta=10_000.0,
          factor=8.0,
          low_freq_factor=1.0,
          high_freq_factor=4.0,
          original_max_position_embeddings=16,
        ),
      ),
    ),
    "qwen2": (t.Qwen2ForCausalLM, t.Qwen2Config(**_COMMON)),
    "gemma2": (
      t.Gemma2ForCausalLM,
      t.Gemma2Config(**_COMMON, sliding_window=4, query_pre_attn_scalar=16),
    ),
    "gemma3": (
      t.Gemma3ForCausalLM,
      t.Gemma3TextConfig(
        **_COMMON,
        sliding_window=4,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "full_attention"],
      ),
    ),
  }


FAMILIES = sorted(_hf_models())


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
  """(name, torch model, our config, our params) for one family."""
  cls, hf_config = _hf_models()[request.param]
  hf_config._attn_implementation = "eager"
  torch.manual_seed(0)
  model = cls(hf_config).eval()
  with torch.no_grad():
    # Norm scales and biases start at constants; randomise them so that a
    # mix-up between norms, or a dropped bias, shows in the logits.
    for name, param in model.named_parameters():
      if "norm" in name or "bias" in name:
        param.normal_(0.0, 0.3)
  directory = tmp_path_factory.mktemp(request.param)
  model.save_pretrained(directory)
  config, params = load_hf_checkpoint(directory)
  return request.param, model, config, params


def _tokens(batch=2, length=12, seed=0):
  return np.random.default_rng(seed).integers(0, VOCAB, (batch, length))


def _reference_logits(model, tokens):
  with torch.no_grad():
    return model(torch.as_tensor(np.array(tokens))).logits.numpy()


def test_config_matches_family(family):
  name, _, config, _ = family
  assert config.qkv_bias == (name == "qwen2")
  assert config.sandwich_norms == name.startswith("gemma")
  assert config.qk_norm == (name == "gemma3")
  if name.startswith("gemma"):
    assert "local" in config.layer_types
  if name == "llama":
    assert config.rope.kind == "llama3"


def test_logits_match_transformers(family):
  _, model, config, params = family
  tokens = _tokens()
  reference = _reference_logits(model, tokens)
  assert np.abs(reference).max() > 0.5, "logits too small to test parity"
  out = Decoder(config).apply({"params": params}, jnp.asarray(tokens))
  np.testing.assert_allclose(out.logits, reference, atol=TOLERANCE, rtol=0)
  assert out.hidden.shape == (2, 12, config.embed_dim)


def test_cached_decoding_equals_uncached(family):
  _, model, config, params = family
  tokens = jnp.asarray(_tokens(length=10, seed=1))
  decoder = Decoder(config)
  full = decoder.apply({"params": params}, tokens).logits
  cache = init_cache(config, batch_size=2, size=16)
  prefill = decoder.apply(
    {"params": params},
    tokens[:, :6],
    cache=cache,
    logits_at=jnp.full((2, 1), 5),
  )
  np.testing.assert_allclose(prefill.logits[:, 0], full[:, 5], atol=TOLERANCE)
  cache = prefill.cache
  for step in range(6, 10):
    out = decoder.apply(
      {"params": params}, tokens[:, step : step + 1], cache=cache
    )
    np.testing.assert_allclose(out.logits[:, 0], full[:, step], atol=TOLERANCE)
    cache = out.cache
  assert int(cache.end) == 10
  np.testing.assert_array_equal(cache.next_positions, [10, 10])
  # And the cached logits equal transformers' too.
  np.testing.assert_allclose(
    out.logits[:, 0],
    _reference_logits(model, np.asarray(tokens))[:, 9],
    atol=TOLERANCE,
  )


def test_padding_is_transparent(family):
  """Left- and right-padded rows give the logits of the unpadded sequence."""
  _, _, config, params = family
  decoder = Decoder(config)
  real = jnp.asarray(_tokens(batch=1, length=7, seed=2))
  alone = decoder.apply({"params": params}, real).logits[0]
  pad = jnp.zeros((1, 3), jnp.int32)
  left = jnp.concatenate([pad, real], axis=1)
  right = jnp.concatenate([real, pad], axis=1)
  tokens = jnp.concatenate([left, right], axis=0)
  mask = tokens * 0 + jnp.asarray([[0] * 3 + [1] * 7, [1] * 7 + [0] * 3])
  out = decoder.apply({"params": params}, tokens, input_mask=mask.astype(bool))
  np.testing.assert_allclose(out.logits[0, 3:], alone, atol=TOLERANCE)
  np.testing.assert_allclose(out.logits[1, :7], alone, atol=TOLERANCE)


def test_embeddings_input_and_logit_positions(family):
  _, _, config, params = family
  decoder = Decoder(config)
  variables = {"params": params}
  tokens = jnp.asarray(_tokens(seed=3))
  by_ids = decoder.apply(variables, tokens)
  embedded = decoder.apply(variables, tokens, method=Decoder.embed)
  where = jnp.asarray([[0, 11, 4], [7, 7, 2]])
  by_embeddings = decoder.apply(variables, embeddings=embedded, logits_at=where)
  expected = jnp.take_along_axis(by_ids.logits, where[..., None], axis=1)
  np.testing.assert_allclose(by_embeddings.logits, expected, atol=1e-6)
  np.testing.assert_allclose(by_embeddings.hidden, by_ids.hidden, atol=1e-6)
  head = decoder.apply(variables, by_ids.hidden, method=Decoder.logits)
  np.testing.assert_allclose(head, by_ids.logits, atol=1e-6)


def test_bfloat16_run_is_close_to_float32(family):
  _, _, config, params = family
  tokens = jnp.asarray(_tokens(seed=4))
  f32 = Decoder(config).apply({"params": params}, tokens).logits
  bf16_params = jax.tree.map(lambda p: jnp.asarray(p, jnp.bfloat16), params)
  bf16 = Decoder(config, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16).apply(
    {"params": bf16_params}, tokens
  )
  assert bf16.hidden.dtype == jnp.bfloat16
  assert bf16.logits.dtype == jnp.float32
  # bfloat16 keeps ~3 significant digits; a wiring error would be O(1).
  scale = float(jnp.abs(f32).max())
  assert float(jnp.abs(bf16.logits - f32).max()) < 0.1 * scale
