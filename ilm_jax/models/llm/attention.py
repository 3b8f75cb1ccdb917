"""Multi-head self-attention with grouped-query heads, RoPE and a KV cache.

Covers every variant of the supported families: q/k/v biases (Qwen2), q/k
RMSNorm (Gemma 3), a custom query scale (Gemma's ``query_pre_attn_scalar``),
soft-capped logits (Gemma 2) and sliding-window layers (through the mask the
caller passes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from ilm_jax.models.llm.config import LlmConfig
from ilm_jax.models.llm.norm import RMSNorm
from ilm_jax.models.llm.rope import apply_rope

# Masked logits get this instead of -inf so that a fully masked row (a padding
# query) softmaxes to a harmless uniform distribution rather than NaN.
_MASKED_LOGIT = -1e30

_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


def projection(
  module: nn.Module, name: str, shape: tuple[int, ...], axes, dtype
) -> jax.Array:
  """A kernel parameter annotated with its logical axis names."""
  init = nn.with_logical_partitioning(_KERNEL_INIT, axes)
  return module.param(name, init, shape, dtype)


class Attention(nn.Module):
  """Self-attention of one decoder layer.

  Attributes:
    config: the decoder's config.
    dtype: compute dtype of the projections (logits/softmax run in float32).
    param_dtype: dtype of the parameters.
  """

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
    kv: tuple[jax.Array, jax.Array] | None = None,
    write_at: jax.Array | None = None,
    prefix_kv: tuple[jax.Array, jax.Array] | None = None,
    prefix_mask: jax.Array | None = None,
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Attends from the T new tokens to themselves and the cached ones.

    Args:
      x: float[B, T, D], normalised residual stream.
      cos: float32[B, T, head_dim // 2] RoPE cosines of the new tokens.
      sin: float32[B, T, head_dim // 2] RoPE sines.
      mask: bool[B, T, S], allowed (query, key) pairs; S = T without cache.
      kv: this layer's cached (keys, values), each float[B, K, S, head_dim],
        or None to attend only within ``x``.
      write_at: int32[], cache slot of the first new token.
      prefix_kv: a SharedPrefix's (keys, values) of this layer, each
        float[R, K, P, head_dim] with B = R x G: row ``r * G + j`` also
        attends to prompt ``r``'s slots, ahead of its own ``kv``.
      prefix_mask: bool[B, T, P], allowed (query, prefix slot) pairs.

    Returns:
      (float[B, T, D] attention output, updated (keys, values) or None).
    """
    cfg = self.config
    d, h, k, hd = cfg.embed_dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    pd = self.param_dtype
    x = x.astype(self.dtype)

    def project(name, heads, head_axis):
      kernel = projection(
        self,
        f"{name}_kernel",
        (d, heads, hd),
        ("embed", head_axis, "head_dim"),
        pd,
      )
      out = jnp.einsum("btd,dhe->bthe", x, kernel.astype(self.dtype))
      if cfg.qkv_bias:
        bias_init = nn.with_logical_partitioning(
          nn.initializers.zeros, (head_axis, "head_dim")
        )
        bias = self.param(f"{name}_bias", bias_init, (heads, hd), pd)
        out = out + bias.astype(self.dtype)
      return out

    q = project("q", h, "heads")
    new_k = project("k", k, "kv_heads")
    new_v = project("v", k, "kv_heads")
    if cfg.qk_norm:
      norm = dict(eps=cfg.norm_eps, plus_one=cfg.norm_plus_one)
      q = RMSNorm(**norm, dtype=self.dtype, param_dtype=pd, name="q_norm")(q)
      new_k = RMSNorm(**norm, dtype=self.dtype, param_dtype=pd, name="k_norm")(
        new_k
      )
    q = apply_rope(q, cos, sin)
    new_k = apply_rope(new_k, cos, sin)
    q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))

    # Head-major layouts [B, K, L, head_dim] make (batch, kv head) the leading
    # batch dimensions of both attention matmuls, as XLA's dot wants them, so
    # neither the cache nor any kernel gets re-laid out on every call.
    new_k = jnp.swapaxes(new_k, 1, 2)
    new_v = jnp.swapaxes(new_v, 1, 2)
    if kv is None:
      keys, values, new_kv = new_k, new_v, None
    else:
      cached_k, cached_v = kv
      keys = jax.lax.dynamic_update_slice(
        cached_k, new_k.astype(cached_k.dtype), (0, 0, write_at, 0)
      )
      values = jax.lax.dynamic_update_slice(
        cached_v, new_v.astype(cached_v.dtype), (0, 0, write_at, 0)
      )
      new_kv = (keys, values)
      keys, values = keys.astype(self.dtype), values.astype(self.dtype)

    b, t = q.shape[:2]
    # Query head h reads kv head h // (h / k) (grouped-query attention).
    grouped = jnp.transpose(q.reshape(b, t, k, h // k, hd), (0, 2, 3, 1, 4))
    logits = jnp.einsum(
      "bkgtd,bksd->bkgts",
      grouped,
      keys,
      preferred_element_type=jnp.float32,
    )
    logits = logits * cfg.attention_scale
    if cfg.attn_softcap is not None:
      logits = jnp.tanh(logits / cfg.attn_softcap) * cfg.attn_softcap
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED_LOGIT)
    if prefix_kv is None:
      probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      out = jnp.einsum("bkgts,bksd->bkgtd", probs, values)
    else:
      out = self._with_prefix(grouped, logits, values, prefix_kv, prefix_mask)
    # Back to token-major [B, T, H * head_dim]: one small activation copy, so
    # that the output kernel is read as the plain [H * head_dim, D] matrix.
    out = jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, h * hd)
    o_kernel = projection(
      self, "o_kernel", (h, hd, d), ("heads", "head_dim", "embed"), pd
    )
    out = out @ o_kernel.astype(self.dtype).reshape(h * hd, d)
    return out, new_kv

  def _with_prefix(self, grouped, logits, values, prefix_kv, prefix_mask):
    """Attention over a shared prefix's slots and the rows' own cache.

    Args:
      grouped: float[B, K, G', T, head_dim] queries (G' query heads per KV
        head), B = R x G rows.
      logits: float32[B, K, G', T, S] masked logits over the rows' own slots.
      values: float[B, K, S, head_dim] the rows' own values.
      prefix_kv: (keys, values), each float[R, K, P, head_dim].
      prefix_mask: bool[B, T, P].

    Returns:
      float[B, K, G', T, head_dim], the softmax over both sets of slots.
    """
    cfg = self.config
    prefix_k, prefix_v = (x.astype(self.dtype) for x in prefix_kv)
    b, k, heads, t, hd = grouped.shape
    rows, length = prefix_k.shape[0], prefix_k.shape[2]
    group = b // rows
    # [R, K, G x G' x T, head_dim]: the G rows of a prompt are extra query
    # rows of one matmul per (prompt, KV head), so the prompt's keys and
    # values are read once per prompt rather than once per row.
    q = grouped.reshape(rows, group, k, heads, t, hd)
    q = jnp.transpose(q, (0, 2, 1, 3, 4, 5))
    prefix_logits = jnp.einsum(
      "rkjgtd,rkpd->rkjgtp", q, prefix_k, preferred_element_type=jnp.float32
    )
    prefix_logits = prefix_logits * cfg.attention_scale
    if cfg.attn_softcap is not None:
      prefix_logits = jnp.tanh(prefix_logits / cfg.attn_softcap)
      prefix_logits = prefix_logits * cfg.attn_softcap
    mask = prefix_mask.reshape(rows, group, t, length)[:, None, :, None]
    prefix_logits = jnp.where(mask, prefix_logits, _MASKED_LOGIT)
    # One softmax over prefix and own slots; the rows' own logits (a few
    # generated slots) move to the prefix's layout, not the other way.
    own = logits.reshape(rows, group, k, heads, t, -1)
    own = jnp.transpose(own, (0, 2, 1, 3, 4, 5))
    both = jnp.concatenate([prefix_logits, own], axis=-1)
    probs = jax.nn.softmax(both, axis=-1).astype(self.dtype)
    out = jnp.einsum("rkjgtp,rkpd->rkjgtd", probs[..., :length], prefix_v)
    own_v = values.reshape(rows, group, k, -1, hd)
    out = out + jnp.einsum("rkjgts,rjksd->rkjgtd", probs[..., length:], own_v)
    out = jnp.transpose(out, (0, 2, 1, 3, 4, 5))
    return out.reshape(b, k, heads, t, hd)
