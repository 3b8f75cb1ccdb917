"""How the frozen LLM computes: rematerialisation and bfloat16 activations.

Remat must not change what is computed (loss and the gradient reaching the
soft tokens); bfloat16 activations must stay close to float32.
"""

import copy

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from ilm_jax.convert import frozen_llm
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.pipeline import stage2
from ilm_jax.train import provenance
from tests.tiny import stage2_config, write_random_cf_table


def _soft_token_loss(decoder, params):
  """(loss, gradient to the input embeddings) of a tiny decoder call whose
  input is all soft tokens: what stage 2 differentiates."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, decoder.config.embed_dim)) * 0.5)
  x = x.astype(jnp.float32)
  mask = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [6]]))
  at = jnp.asarray([[3, 8], [2, 5]])
  weights = jnp.asarray(rng.normal(size=(2, 2, decoder.config.vocab_size)))

  def loss(x):
    out = decoder.apply(
      {"params": params}, embeddings=x, input_mask=mask, logits_at=at
    )
    return jnp.sum(jax.nn.log_softmax(out.logits) * weights)

  return jax.jit(jax.value_and_grad(loss))(x)


@pytest.mark.parametrize("remat", ["block", "dots"])
def test_remat_keeps_loss_and_soft_token_gradients(remat):
  config, params, _ = frozen_llm.tiny_llm()
  loss, grad = _soft_token_loss(Decoder(config), params)
  loss_r, grad_r = _soft_token_loss(Decoder(config, remat=remat), params)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  np.testing.assert_allclose(grad_r, grad, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(grad).max()) > 0


def test_unknown_remat_is_named():
  config, params, _ = frozen_llm.tiny_llm()
  with pytest.raises(ValueError, match="remat 'layers'"):
    Decoder(config, remat="layers").apply(
      {"params": params}, jnp.zeros((1, 3), jnp.int32)
    )


def test_bfloat16_activations_track_float32():
  config, params, _ = frozen_llm.tiny_llm()
  loss, grad = _soft_token_loss(Decoder(config), params)
  bf16 = jax.tree.map(lambda p: p.astype(ml_dtypes.bfloat16), params)
  decoder = Decoder(config, dtype=jnp.bfloat16)
  loss_b, grad_b = _soft_token_loss(decoder, bf16)
  hidden = decoder.apply(
    {"params": bf16}, jnp.zeros((1, 3), jnp.int32), return_logits=False
  ).hidden
  assert hidden.dtype == jnp.bfloat16
  # bfloat16 keeps 8 bits of mantissa: a few parts in a thousand per value.
  np.testing.assert_allclose(loss_b, loss, rtol=2e-2)
  scale = float(jnp.abs(grad).max())
  assert float(jnp.abs(grad_b - grad).max()) < 5e-2 * scale


def test_activation_dtype_follows_the_parameters_unless_named():
  c = stage2_config().stage2
  assert stage2.llm_activation_dtype(c) == np.float32  # auto on CPU
  c.llm_dtype = "bfloat16"
  assert stage2.llm_activation_dtype(c) == ml_dtypes.bfloat16
  c.llm_activations = "float32"
  assert stage2.llm_activation_dtype(c) == np.float32


def test_remat_and_auto_activations_leave_the_provenance_alone(tmp_path):
  """A run may resume with another remat (same results), and workdirs from
  before ``llm_activations`` existed (trained as "auto") still resume."""
  config = stage2_config()
  write_random_cf_table(config, tmp_path)
  params = {"w": np.ones(3, np.float32)}
  before = stage2._provenance(config, tmp_path, params)
  config.stage2.remat = "block"
  assert stage2._provenance(config, tmp_path, params) == before
  older = copy.deepcopy(before)
  del older["stage2"]["llm_activations"]
  assert provenance.differences(older, before) == []
  config.stage2.llm_activations = "bfloat16"
  changed = stage2._provenance(config, tmp_path, params)
  assert changed["stage2"]["llm_activations"] == "bfloat16"
