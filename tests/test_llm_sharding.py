"""Sharded execution on 8 fake CPU devices, orbax round trips, and full-size
configs checked by shape alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.convert.orbax_io import (
  abstract_params,
  restore_llm,
  save_llm,
)
from ilm_jax.models.llm import Decoder, LlmConfig, count_params, preset
from ilm_jax.sharding.mesh import DEFAULT_RULES, make_mesh, tree_shardings

CONFIG = LlmConfig(
  vocab_size=128,
  embed_dim=32,
  mlp_dim=64,
  num_layers=2,
  num_heads=8,
  num_kv_heads=4,
  head_dim=8,
  qkv_bias=True,
  tie_embeddings=False,
  layer_types=("local", "global"),
  sliding_window=3,
)


@pytest.fixture(scope="module")
def mesh():
  if jax.device_count() < 8:
    pytest.skip("needs 8 (fake) devices: JAX_NUM_CPU_DEVICES=8")
  return make_mesh((2, 1, 4))  # data x fsdp x tensor


@pytest.fixture(scope="module")
def params():
  variables = jax.jit(Decoder(CONFIG).init)(
    jax.random.key(0), jnp.zeros((1, 4), jnp.int32)
  )
  return nn.unbox(variables["params"])


def _tokens():
  return jnp.asarray(np.random.default_rng(0).integers(0, 128, (4, 10)))


def test_sharded_forward_equals_unsharded(mesh, params):
  decoder = Decoder(CONFIG)
  tokens = _tokens()
  expected = decoder.apply({"params": params}, tokens)
  specs = nn.get_partition_spec(abstract_params(CONFIG))
  shardings = nn.unbox(tree_shardings(specs, mesh))
  sharded = jax.device_put(params, shardings)
  q_spec = sharded["layers_0"]["attn"]["q_kernel"].sharding.spec
  assert "tensor" in tuple(q_spec)  # heads really are split
  batch = jax.sharding.NamedSharding(
    mesh, jax.sharding.PartitionSpec(("data", "fsdp"))
  )

  @jax.jit
  def forward(p, t):
    with nn.logical_axis_rules(DEFAULT_RULES):
      return decoder.apply({"params": p}, t)

  with jax.set_mesh(mesh):
    out = forward(sharded, jax.device_put(tokens, batch))
  assert len(out.logits.sharding.device_set) == 8
  np.testing.assert_allclose(out.logits, expected.logits, atol=1e-5)
  np.testing.assert_allclose(out.hidden, expected.hidden, atol=1e-5)


def test_orbax_round_trip_restores_sharded(mesh, params, tmp_path):
  save_llm(tmp_path / "llm", CONFIG, params)
  config, restored = restore_llm(tmp_path / "llm", mesh=mesh)
  assert config == CONFIG
  kernel = restored["layers_1"]["mlp"]["gate_kernel"]
  assert isinstance(kernel.sharding, jax.sharding.NamedSharding)
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  jax.tree.map(np.testing.assert_array_equal, restored, params)
  _, as_bf16 = restore_llm(tmp_path / "llm", dtype=jnp.bfloat16)
  assert as_bf16["embedding"].dtype == jnp.bfloat16
  with pytest.raises(FileExistsError):
    save_llm(tmp_path / "llm", CONFIG, params)


@pytest.mark.parametrize(
  "name,published",
  [
    ("gemma-2b", 2_506_172_416),
    ("llama3-8b", 8_030_261_248),
  ],
)
def test_full_size_configs_have_published_parameter_counts(name, published):
  abstract = abstract_params(preset(name))
  leaves = jax.tree.leaves(nn.unbox(abstract))
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  assert count_params(abstract) == published


def test_config_round_trips_through_dict():
  for name in ("gemma3-270m", "llama3-8b"):
    config = preset(name)
    assert LlmConfig.from_dict(config.to_dict()) == config
  with pytest.raises(ValueError, match="unknown fields"):
    LlmConfig.from_dict({"bogus": 1})


def test_sharded_generation_equals_unsharded(mesh, params):
  from ilm_jax.decode.sampling import generate

  decoder = Decoder(CONFIG)
  tokens = _tokens()
  expected = generate(decoder, params, tokens, max_new_tokens=5)
  specs = nn.get_partition_spec(abstract_params(CONFIG))
  sharded = jax.device_put(params, nn.unbox(tree_shardings(specs, mesh)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(DEFAULT_RULES):
    out = generate(decoder, sharded, tokens, max_new_tokens=5)
  np.testing.assert_array_equal(out.tokens, expected.tokens)
