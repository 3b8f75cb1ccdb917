"""One decoder block: pre-norm attention and gated MLP with residual adds.

Gemma 2/3 add "sandwich" norms on the outputs of attention and MLP before the
residual add; the other families leave them out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax.models.llm.attention import Attention, projection
from ilm_jax.models.llm.config import LlmConfig
from ilm_jax.models.llm.norm import RMSNorm

_ACTIVATIONS = {
  "silu": jax.nn.silu,
  "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}


class GatedMlp(nn.Module):
  """``down(act(gate(x)) * up(x))``."""

  config: LlmConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """float[B, T, D] -> float[B, T, D]."""
    d, f, pd = self.config.embed_dim, self.config.mlp_dim, self.param_dtype
    gate = projection(self, "gate_kernel", (d, f), ("embed", "mlp"), pd)
    up = projection(self, "up_kernel", (d, f), ("embed", "mlp"), pd)
    down = projection(self, "down_kernel", (f, d), ("mlp", "embed"), pd)
    x = x.astype(self.dtype)
    act = _ACTIVATIONS[self.config.activation]
    hidden = act(x @ gate.astype(self.dtype)) * (x @ up.astype(self.dtype))
    hidden = nn.with_logical_constraint(hidden, ("batch", "length", "mlp"))
    return hidden @ down.astype(self.dtype)


class DecoderLayer(nn.Module):
  """Attention then MLP, each pre-normed and added to the residual stream."""

  config: LlmConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    cos: jax.Array,
    sin: jax.Array,
    mask: jax.Array,
    kv: tuple[jax.Array, jax.Array] | None,
    write_at: jax.Array | None,
    prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    prefix_mask: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """See ``Attention.__call__``; x is the raw residual stream here."""
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = dict(eps=cfg.norm_eps, plus_one=cfg.norm_plus_one, **kw)
    h = RMSNorm(**norm, name="pre_attn_norm")(x)
    h, kv = Attention(cfg, **kw, name="attn")(
      h, cos, sin, mask, kv, write_at, prefix_kv, prefix_mask
    )
    if cfg.sandwich_norms:
      h = RMSNorm(**norm, name="post_attn_norm")(h)
    x = x + h.astype(x.dtype)
    h = RMSNorm(**norm, name="pre_mlp_norm")(x)
    h = GatedMlp(cfg, **kw, name="mlp")(h)
    if cfg.sandwich_norms:
      h = RMSNorm(**norm, name="post_mlp_norm")(h)
    x = x + h.astype(x.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", None))
    return x, kv
