"""Prefill: run the prompt once, fill the KV cache, keep the last logits.

Shared by sampling and beam search. The prompt is token ids or input
embeddings (an ILM prompt with soft item tokens), left- or right-padded.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.models.llm.kv_cache import KVCache, SharedPrefix, init_cache


def last_real_index(mask: jax.Array) -> jax.Array:
  """int32[B], index of each row's last real token in bool[B, T]."""
  length = mask.shape[1]
  index = jnp.where(mask, jnp.arange(length, dtype=jnp.int32), -1)
  return jnp.max(index, axis=1)


def prefill(
  decoder: Decoder,
  params,
  prompt_tokens: jax.Array | None,
  prompt_embeddings: jax.Array | None,
  prompt_mask: jax.Array | None,
  cache_size: int,
  cache_dtype=None,
) -> tuple[jax.Array, KVCache]:
  """Runs the prompt into a fresh cache.

  Args:
    decoder: the Decoder module.
    params: its parameters (the ``params`` collection).
    prompt_tokens: int32[B, T], or None when embeddings are given.
    prompt_embeddings: float[B, T, D], or None.
    prompt_mask: bool[B, T] real prompt tokens (None: all real). Every row
      needs at least one real token.
    cache_size: slots of the cache, at least T + tokens to generate.
    cache_dtype: dtype of cached keys/values (the decoder's dtype default).

  Returns:
    (float32[B, V] logits after each row's last real token, filled cache).
  """
  prompt = prompt_tokens if prompt_tokens is not None else prompt_embeddings
  batch, length = prompt.shape[:2]
  if cache_size < length:
    raise ValueError(f"cache_size {cache_size} < prompt length {length}")
  if prompt_mask is None:
    prompt_mask = jnp.ones((batch, length), bool)
  prompt_mask = prompt_mask.astype(bool)
  cache = init_cache(
    decoder.config, batch, cache_size, cache_dtype or decoder.dtype
  )
  out = decoder.apply(
    {"params": params},
    prompt_tokens,
    embeddings=prompt_embeddings,
    input_mask=prompt_mask,
    cache=cache,
    logits_at=last_real_index(prompt_mask)[:, None],
  )
  return out.logits[:, 0], out.cache


def decode_step(
  decoder: Decoder,
  params,
  tokens: jax.Array,
  is_real: jax.Array,
  cache: KVCache,
  prefix: SharedPrefix | None = None,
) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row.

  Args:
    decoder: the Decoder module.
    params: its parameters.
    tokens: int32[B] next token of each row.
    is_real: bool[B]; False for rows that already finished (the token is
      padding that later tokens never attend to).
    cache: the cache so far.
    prefix: a SharedPrefix of R = B / G prompts the rows continue (``cache``
      then holds only their tokens after it), or None.

  Returns:
    (float32[B, V] next-token logits, updated cache).
  """
  out = decoder.apply(
    {"params": params},
    tokens[:, None],
    input_mask=is_real[:, None],
    cache=cache,
    prefix=prefix,
  )
  return out.logits[:, 0], out.cache
