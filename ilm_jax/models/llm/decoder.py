"""The decoder-only LLM: embeddings, a stack of blocks, a final norm and head.

Interface used by the ILM (stage 2) and by the decoding loops:

* ``Decoder.embed(tokens)`` looks token ids up in the embedding table,
  including Gemma's ``sqrt(embed_dim)`` scaling, so soft tokens spliced
  between word embeddings live in the same space as ``embed``'s output.
* ``Decoder.__call__`` takes token ids *or* input embeddings, a mask of real
  tokens (left or right padding), optional positions, an optional KV cache,
  and the positions at which to compute logits (the vocabulary projection is
  the most expensive matmul of a small model; scoring or generating needs it
  at a few positions only). It returns the final (normed) hidden states too.
* ``Decoder.logits(hidden)`` is the output head on its own.

Prefill with ``embeddings`` and a cache, then keep calling with ``tokens`` and
the returned cache: that is generation after a prompt holding soft tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import struct

from ilm_jax.models.llm import kv_cache as kvc
from ilm_jax.models.llm.block import DecoderLayer
from ilm_jax.models.llm.config import LOCAL, LlmConfig
from ilm_jax.models.llm.norm import RMSNorm
from ilm_jax.models.llm.rope import rope_angles

# Rematerialisation policies by name (``Decoder.remat``): what a layer keeps
# for the backward pass, None = nothing but its input.
REMAT = {
  "none": None,
  "block": None,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


@struct.dataclass
class DecoderOutput:
  """What one decoder call returns.

  Attributes:
    logits: float32[B, P, V] at the requested positions, float32[B, T, V]
      when none were requested, or None when logits were switched off.
    hidden: float[B, T, D], final hidden states after the final norm (the
      input of the output head).
    cache: the updated KVCache, or None when called without one.
  """

  logits: jax.Array | None
  hidden: jax.Array
  cache: kvc.KVCache | None


class Decoder(nn.Module):
  """A Llama- or Gemma-family decoder, chosen by ``config``.

  Attributes:
    config: the architecture.
    dtype: compute dtype (float32 or bfloat16); norms, attention softmax and
      logits are always float32.
    param_dtype: dtype the parameters are created in by ``init``.
    remat: what the backward pass recomputes instead of keeping (one of
      ``REMAT``): "none"; "block", every layer's activations (only its input
      is kept); "dots", all but its projections' outputs (matmuls without batch
      dimensions; attention is recomputed). Results are the same;
      memory and time differ.
  """

  config: LlmConfig
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32
  remat: str = "none"

  def setup(self):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    if self.remat not in REMAT:
      raise ValueError(
        f"Decoder: remat {self.remat!r}: choose one of {', '.join(REMAT)}"
      )
    layer = DecoderLayer
    if self.remat != "none":
      layer = nn.remat(DecoderLayer, policy=REMAT[self.remat])
    self.embedding = self.param(
      "embedding",
      nn.with_logical_partitioning(
        nn.initializers.normal(stddev=0.02), ("vocab", "embed")
      ),
      (cfg.vocab_size, cfg.embed_dim),
      self.param_dtype,
    )
    self.layers = [layer(cfg, **kw) for _ in range(cfg.num_layers)]
    self.final_norm = RMSNorm(
      eps=cfg.norm_eps, plus_one=cfg.norm_plus_one, **kw
    )
    if not cfg.tie_embeddings:
      self.lm_head = self.param(
        "lm_head",
        nn.with_logical_partitioning(
          nn.initializers.normal(stddev=0.02), ("embed", "vocab")
        ),
        (cfg.embed_dim, cfg.vocab_size),
        self.param_dtype,
      )

  def embed(self, tokens: jax.Array) -> jax.Array:
    """Input embeddings of token ids.

    Args:
      tokens: int32[B, T].

    Returns:
      float[B, T, D] in ``dtype``, already multiplied by the embedding scale
      (Gemma), i.e. exactly what ``__call__`` adds soft tokens to.
    """
    x = jnp.take(self.embedding, tokens, axis=0)
    if self.config.scale_embeddings:
      # The reference rounds the scale to the weights' dtype first.
      scale = jnp.asarray(self.config.embedding_scale, self.param_dtype)
      x = x * scale
    return x.astype(self.dtype)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """Output head: final hidden states float[..., D] -> float32[..., V]."""
    if self.config.tie_embeddings:
      # Contract with the table's rows as stored: a transposed copy of the
      # [V, D] table (the largest array of a small model) on every call
      # would cost as much memory traffic as the product itself.
      head, spec = self.embedding.astype(self.dtype), "...d,vd->...v"
    else:
      head, spec = self.lm_head.astype(self.dtype), "...d,dv->...v"
    out = jnp.einsum(
      spec, hidden.astype(self.dtype), head, preferred_element_type=jnp.float32
    )
    cap = self.config.final_softcap
    if cap is not None:
      out = jnp.tanh(out / cap) * cap
    return out

  def __call__(
    self,
    tokens: jax.Array | None = None,
    *,
    embeddings: jax.Array | None = None,
    input_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    cache: kvc.KVCache | None = None,
    logits_at: jax.Array | None = None,
    return_logits: bool = True,
    segment_ids: jax.Array | None = None,
    prefix: kvc.SharedPrefix | None = None,
  ) -> DecoderOutput:
    """Runs the decoder over T new tokens.

    Args:
      tokens: int32[B, T] token ids; give this or ``embeddings``.
      embeddings: float[B, T, D] input embeddings (e.g. word embeddings from
        ``embed`` with soft tokens spliced in).
      input_mask: bool[B, T], True for real tokens; padding tokens are never
        attended to. Default: all real.
      positions: int32[B, T] RoPE positions. Default: real tokens counted
        from 0 (or from the cache's next position per row), so left and right
        padding both give every row the positions of its unpadded sequence.
      cache: a KVCache from ``kv_cache.init_cache`` or from a previous call;
        the new tokens are appended to it and may attend to its contents.
      logits_at: int32[B, P] indices into the T new tokens at which to
        compute logits; None computes them at every token.
      return_logits: False skips the output head (``logits`` is None).
      segment_ids: int32[B, T] packed continuations (no cache): tokens of
        segment s > 0 attend only to segment 0 and to their own segment
        (``kv_cache.context_without_cache``). Give ``positions`` with it so
        each continuation continues the shared prefix's positions.
      prefix: a ``kv_cache.SharedPrefix`` of R prompts (with a cache of B =
        R x G rows): rows ``r * G .. r * G + G - 1`` attend to prompt r's
        slots ahead of their own cache, which then holds only what follows
        the prompt (its ``next_positions`` continue the prompt's).

    Returns:
      A DecoderOutput (logits, final hidden states, updated cache).
    """
    cfg = self.config
    if (tokens is None) == (embeddings is None):
      raise ValueError("Decoder: pass exactly one of tokens or embeddings")
    if tokens is not None:
      x = self.embed(tokens)
    else:
      if embeddings.shape[-1] != cfg.embed_dim:
        raise ValueError(
          f"Decoder: embeddings have width {embeddings.shape[-1]}, the "
          f"model expects {cfg.embed_dim}"
        )
      x = embeddings.astype(self.dtype)
    batch, length = x.shape[:2]
    if input_mask is None:
      input_mask = jnp.ones((batch, length), bool)
    input_mask = input_mask.astype(bool)
    if positions is None:
      start = None if cache is None else cache.next_positions
      positions = kvc.default_positions(input_mask, start)
    positions = positions.astype(jnp.int32)
    window = cfg.sliding_window if LOCAL in cfg.layer_types else None
    if prefix is not None and cache is None:
      raise ValueError("Decoder: a shared prefix needs a cache")
    if cache is None:
      ctx = kvc.context_without_cache(
        positions, input_mask, window, segment_ids
      )
    elif segment_ids is not None:
      raise ValueError("Decoder: segment_ids work without a cache only")
    else:
      cache, ctx = kvc.advance_cache(
        cache, positions, input_mask, window, prefix
      )

    global_angles = rope_angles(positions, cfg.rope, cfg.head_dim)
    local_angles = global_angles
    if cfg.local_rope is not None:
      local_angles = rope_angles(positions, cfg.local_rope, cfg.head_dim)

    x = nn.with_logical_constraint(x, ("batch", "length", None))
    new_keys, new_values = [], []
    for i, layer in enumerate(self.layers):
      is_local = cfg.layer_types[i] == LOCAL
      cos, sin = local_angles if is_local else global_angles
      mask = ctx.local_mask if is_local else ctx.global_mask
      kv = None if cache is None else (cache.keys[i], cache.values[i])
      prefix_kv = prefix_mask = None
      if prefix is not None:
        prefix_kv = (prefix.keys[i], prefix.values[i])
        prefix_mask = (
          ctx.prefix_local_mask if is_local else ctx.prefix_global_mask
        )
      x, kv = layer(x, cos, sin, mask, kv, ctx.write_at, prefix_kv, prefix_mask)
      if kv is not None:
        new_keys.append(kv[0])
        new_values.append(kv[1])
    hidden = self.final_norm(x)
    if cache is not None:
      cache = cache.replace(keys=tuple(new_keys), values=tuple(new_values))

    logits = None
    if logits_at is not None:
      picked = jnp.take_along_axis(
        hidden, logits_at.astype(jnp.int32)[..., None], axis=1
      )
      logits = self.logits(picked)
    elif return_logits:
      logits = self.logits(hidden)
    return DecoderOutput(logits=logits, hidden=hidden, cache=cache)


def count_params(params) -> int:
  """Number of scalars in a (possibly abstract, possibly boxed) param tree."""
  leaves = jax.tree.leaves(nn.unbox(params))
  return int(sum(leaf.size for leaf in leaves))
