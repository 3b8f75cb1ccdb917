"""Rotary position embeddings (RoPE), including linear and Llama-3 scaling.

The layout is the "rotate half" one of HF checkpoints: the first and second
halves of each head form the (real, imaginary) pairs. Checkpoints that store
the interleaved layout (llama.cpp's GGUF for Llama) are un-permuted at load.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ilm_jax.models.llm.config import RopeConfig


def inverse_frequencies(rope: RopeConfig, head_dim: int) -> np.ndarray:
  """Per-pair angular frequencies, computed in float32 like the references.

  Args:
    rope: the RoPE variant.
    head_dim: width of one head (two entries per frequency).

  Returns:
    float32[head_dim // 2].
  """
  exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32)
  inv_freq = (
    1.0 / (np.float32(rope.theta) ** (exponents / np.float32(head_dim)))
  ).astype(np.float32)
  if rope.kind == "linear":
    return (inv_freq / np.float32(rope.factor)).astype(np.float32)
  if rope.kind == "llama3":
    return _llama3_scaled(inv_freq, rope)
  return inv_freq


def _llama3_scaled(inv_freq: np.ndarray, rope: RopeConfig) -> np.ndarray:
  """Llama-3.1 scaling: long wavelengths are slowed by ``factor``, short ones
  kept, and the band in between interpolates smoothly."""
  old_len = np.float32(rope.original_max_position)
  low_wavelen = old_len / np.float32(rope.low_freq_factor)
  high_wavelen = old_len / np.float32(rope.high_freq_factor)
  wavelen = np.float32(2 * math.pi) / inv_freq
  scaled = np.where(wavelen > low_wavelen, inv_freq / rope.factor, inv_freq)
  smooth = (old_len / wavelen - rope.low_freq_factor) / (
    rope.high_freq_factor - rope.low_freq_factor
  )
  smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
  is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_angles(
  positions: jax.Array, rope: RopeConfig, head_dim: int
) -> tuple[jax.Array, jax.Array]:
  """Cosines and sines of the rotation at each position.

  Args:
    positions: int32[B, T] position of each token.
    rope: the RoPE variant.
    head_dim: width of one head.

  Returns:
    (cos, sin), each float32[B, T, head_dim // 2].
  """
  inv_freq = jnp.asarray(inverse_frequencies(rope, head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates queries or keys.

  Args:
    x: float[B, T, H, head_dim].
    cos: float32[B, T, head_dim // 2].
    sin: float32[B, T, head_dim // 2].

  Returns:
    float[B, T, H, head_dim], same dtype as ``x``.
  """
  cos = cos[:, :, None, :].astype(x.dtype)
  sin = sin[:, :, None, :].astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)
  return jnp.concatenate(
    [first * cos - second * sin, second * cos + first * sin], axis=-1
  )
