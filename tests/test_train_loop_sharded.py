"""One sharded Q-Former training step equals the single-device step.

The loss mixes all stage-1 objectives, so equality also shows that in-batch
negatives (and ITM hard negatives) come from the whole global batch, not from
each device's shard.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from ilm_jax.experiment_config import loop_config
from ilm_jax.models.bert import BertConfig
from ilm_jax.models.qformer import QFormerConfig
from ilm_jax.models.stage1_model import Stage1Model
from ilm_jax.objectives import mix
from ilm_jax.sharding.mesh import make_mesh
from ilm_jax.train import loop


def _stage1_setup():
  bc = BertConfig(
    vocab_size=32,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    max_position_embeddings=8,
  )
  model = Stage1Model(
    QFormerConfig(bc, num_queries=2, num_cf_tokens=2, cf_dim=4), embed_dim=8
  )
  b, length = 8, 6
  r = np.random.default_rng(0)
  mask = np.ones((b, length), np.int32)
  mask[::3, 4:] = 0
  batch = {
    "text_item": r.permutation(12)[:b].astype(np.int32),
    "text_ids": r.integers(1, 32, size=(b, length)).astype(np.int32),
    "text_mask": mask,
    "ii_a": r.integers(0, 12, b).astype(np.int32),
    "ii_b": r.integers(0, 12, b).astype(np.int32),
    "ui_user": r.integers(0, 5, b).astype(np.int32),
    "ui_item": r.integers(0, 12, b).astype(np.int32),
  }
  boxed = jax.jit(model.init)(
    jax.random.key(0),
    jnp.ones((2, 4)),
    jnp.zeros((2,), jnp.int32),
    batch["text_ids"][:2],
    batch["text_mask"][:2],
  )
  table = r.normal(size=(5 + 12, 4)).astype(np.float32)
  loss_mix = mix.parse_loss_mix("all")

  def loss_fn(params, frozen, batch, rng):
    return mix.stage1_loss(model, params, frozen, batch, rng, loss_mix, 5, 1)

  return loss_fn, boxed, table, batch


def test_sharded_step_equals_single_device_step():
  loss_fn, boxed, table, batch = _stage1_setup()
  params = nn.unbox(boxed)["params"]
  specs = nn.get_partition_spec(boxed)["params"]
  config = loop_config()
  config.warmup_steps = 0
  config.learning_rate = 1e-3
  results = []
  for mesh in (
    make_mesh((1, 1, 1), devices=jax.devices()[:1]),
    make_mesh((2, 4, 1)),
  ):
    trainer = loop.Trainer(loss_fn, config, params, specs, mesh)
    state = trainer.init_state(params)
    state, metrics = trainer.step(
      state, trainer.place_frozen(table), trainer.place_batch(batch)
    )
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
    if mesh.size == 8:  # params really are sharded over fsdp
      kernel = state.params["qformer"]["layer_0"]["ffn"]["intermediate"]
      assert "fsdp" in str(kernel["kernel"].sharding.spec)
  (p1, m1), (p8, m8) = results
  for name in ("loss", "itc_loss", "itm_loss", "itg_loss", "ii_loss"):
    assert m8[name] == pytest.approx(m1[name], abs=1e-5), name
  # The gradients agree (a wrong reduction over devices would scale them).
  assert m8["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
  # Adam's first update is about lr * sign(gradient), so where a gradient is
  # near zero float32 noise (sharded sums, another CPU's vector width) moves
  # it by a fraction of lr; a wrong update would be off by up to 2 * lr.
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(
      a, b, atol=0.2 * config.learning_rate
    ),
    p1,
    p8,
  )
