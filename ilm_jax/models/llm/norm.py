"""RMSNorm in the Llama (``scale``) and Gemma (``1 + scale``) conventions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn


class RMSNorm(nn.Module):
  """Root-mean-square normalisation over the last axis, computed in float32.

  Attributes:
    eps: added to the mean square.
    plus_one: multiply by ``1 + scale`` (Gemma; scale initialised to 0)
      instead of ``scale`` (Llama; initialised to 1).
    dtype: output dtype.
    param_dtype: dtype of ``scale``.
  """

  eps: float = 1e-6
  plus_one: bool = False
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises float[..., N] and returns it in ``dtype``."""
    init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
    scale = self.param(
      "scale",
      nn.with_logical_partitioning(init, ("norm",)),
      (x.shape[-1],),
      self.param_dtype,
    ).astype(jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * (1.0 + scale if self.plus_one else scale)).astype(self.dtype)
