"""The key/value cache of cached decoding, and the attention masks it implies.

The cache is a fixed-size buffer of ``S`` slots per sequence. Each call of the
decoder writes its ``T`` new tokens into slots ``[end, end + T)`` (the same
slots for every row of the batch) and records, per slot, whether it holds a
real token and at which position. Attention is then causal in slot order,
restricted to real tokens, and (for local layers) to a window measured in
positions. This one rule serves left-padded prompts, right-padded prompts
(the pad slots simply stay invalid while generation appends after them) and
prompts made of input embeddings alike.

A ``SharedPrefix`` is a prompt's filled cache read by several rows at once:
beam search keeps the prompt's keys and values once per prompt and only the
generated tokens' per beam, so neither the prompt's cache is copied per beam
nor its slots are read once per beam by attention.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from ilm_jax.models.llm.config import LlmConfig


@struct.dataclass
class KVCache:
  """Per-layer keys and values plus the bookkeeping of every slot.

  Attributes:
    keys: per layer, float[B, num_kv_heads, S, head_dim] (after RoPE); head-
      major so that attention reads each head's slots without a transpose.
    values: per layer, float[B, num_kv_heads, S, head_dim].
    slot_valid: bool[B, S], the slot holds a real (non-padding) token.
    slot_positions: int32[B, S], RoPE position of the token in each slot.
    end: int32[], first free slot (the same for every row).
    next_positions: int32[B], position the next real token of a row gets.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  slot_valid: jax.Array
  slot_positions: jax.Array
  end: jax.Array
  next_positions: jax.Array

  @property
  def size(self) -> int:
    return self.slot_valid.shape[1]


@struct.dataclass
class SharedPrefix:
  """Cached keys and values of R prompts, each read by G consecutive rows.

  A decoder call of R x G rows with a prefix attends, from row ``r * G + j``,
  to prompt ``r``'s slots here and then to its own cache: what it would see
  if the prompt's slots were copied into each row's cache ahead of its own.

  Attributes:
    keys: per layer, float[R, num_kv_heads, P, head_dim] (after RoPE).
    values: per layer, float[R, num_kv_heads, P, head_dim].
    slot_valid: bool[R, P], the slot holds a real prompt token.
    slot_positions: int32[R, P], RoPE position of each slot's token.
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  slot_valid: jax.Array
  slot_positions: jax.Array

  @property
  def rows(self) -> int:
    return self.slot_valid.shape[0]


def shared_prefix(cache: KVCache) -> SharedPrefix:
  """The filled slots of a prompt cache as a prefix for several rows each.

  Args:
    cache: a cache after prefill; all its slots become the prefix, so
      prefill it with ``size`` equal to the prompt length.
  """
  return SharedPrefix(
    keys=cache.keys,
    values=cache.values,
    slot_valid=cache.slot_valid,
    slot_positions=cache.slot_positions,
  )


def init_cache(
  config: LlmConfig, batch_size: int, size: int, dtype=jnp.float32
) -> KVCache:
  """An empty cache of ``size`` slots per row.

  Args:
    config: the decoder's config.
    batch_size: rows B.
    size: slots S; must cover the prompt plus every generated token.
    dtype: dtype of the stored keys and values.

  Returns:
    A KVCache with all slots invalid.
  """
  shape = (batch_size, config.num_kv_heads, size, config.head_dim)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(
    keys=zeros,
    values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
    slot_valid=jnp.zeros((batch_size, size), bool),
    slot_positions=jnp.zeros((batch_size, size), jnp.int32),
    end=jnp.zeros((), jnp.int32),
    next_positions=jnp.zeros((batch_size,), jnp.int32),
  )


@struct.dataclass
class AttentionContext:
  """What every layer needs to mask its attention, computed once per call.

  Attributes:
    global_mask: bool[B, T, S], allowed (query, key) pairs of global layers.
    local_mask: bool[B, T, S], the same restricted to the sliding window.
    write_at: int32[], cache slot of the first new token (0 without cache).
    prefix_global_mask: bool[B, T, P], allowed (query, prefix slot) pairs of
      global layers when a SharedPrefix is read, else None.
    prefix_local_mask: bool[B, T, P], the same for local layers, or None.
  """

  global_mask: jax.Array
  local_mask: jax.Array
  write_at: jax.Array
  prefix_global_mask: jax.Array | None = None
  prefix_local_mask: jax.Array | None = None


def default_positions(
  input_mask: jax.Array, start: jax.Array | None = None
) -> jax.Array:
  """Positions that count only real tokens, so left padding is transparent.

  Args:
    input_mask: bool[B, T], real tokens.
    start: int32[B], position of a row's first real token (0 by default).

  Returns:
    int32[B, T]; a padding token gets its neighbour's position (unused).
  """
  positions = jnp.cumsum(input_mask.astype(jnp.int32), axis=1) - 1
  positions = jnp.maximum(positions, 0)
  if start is not None:
    positions = positions + start[:, None]
  return positions


def _masks(q_positions, q_slots, k_positions, k_slots, k_valid, window):
  causal = k_slots[None, None, :] <= q_slots[None, :, None]
  global_mask = k_valid[:, None, :] & causal
  if window is None:
    return global_mask, global_mask
  distance = q_positions[:, :, None] - k_positions[:, None, :]
  return global_mask, global_mask & (distance < window)


def context_without_cache(
  positions: jax.Array,
  input_mask: jax.Array,
  window: int | None,
  segment_ids: jax.Array | None = None,
) -> AttentionContext:
  """Masks for a call that attends only within its own T tokens.

  Args:
    positions: int32[B, T] RoPE positions.
    input_mask: bool[B, T] real tokens.
    window: sliding window of local layers, or None.
    segment_ids: int32[B, T] or None. Segment 0 is shared: every token may
      attend to it (causally). A token of segment s > 0 attends to segment 0
      and to earlier tokens of its own segment only, so several short
      continuations packed after one prompt never see each other (each reads
      as if it alone followed the prompt).
  """
  slots = jnp.arange(positions.shape[1], dtype=jnp.int32)
  global_mask, local_mask = _masks(
    positions, slots, positions, slots, input_mask, window
  )
  if segment_ids is not None:
    q, k = segment_ids[:, :, None], segment_ids[:, None, :]
    same = (k == 0) | (k == q)
    global_mask, local_mask = global_mask & same, local_mask & same
  return AttentionContext(global_mask, local_mask, jnp.zeros((), jnp.int32))


def _prefix_masks(prefix: SharedPrefix, positions, window):
  """(global, local) bool[B, T, P] masks of B = R x G query rows over the
  prefix's slots: every valid slot precedes every new token."""
  rows, num_new = positions.shape
  group = rows // prefix.rows
  # Repeating the small [R, P] bookkeeping per row is cheap; the keys and
  # values themselves are never repeated.
  valid = jnp.repeat(prefix.slot_valid, group, axis=0)
  global_mask = jnp.broadcast_to(
    valid[:, None, :], (rows, num_new, valid.shape[1])
  )
  if window is None:
    return global_mask, global_mask
  k_positions = jnp.repeat(prefix.slot_positions, group, axis=0)
  distance = positions[:, :, None] - k_positions[:, None, :]
  return global_mask, global_mask & (distance < window)


def advance_cache(
  cache: KVCache,
  positions: jax.Array,
  input_mask: jax.Array,
  window: int | None,
  prefix: SharedPrefix | None = None,
) -> tuple[KVCache, AttentionContext]:
  """Records T new tokens in the slot bookkeeping and builds their masks.

  The keys and values themselves are written by each attention layer.

  Args:
    cache: the cache before this call.
    positions: int32[B, T] of the new tokens.
    input_mask: bool[B, T], real new tokens.
    window: sliding window of local layers, or None.
    prefix: a SharedPrefix of B / G prompts the rows also attend to (their
      own cache then holds only what follows the prompt), or None.

  Returns:
    (cache with updated slot_valid / slot_positions / end / next_positions,
     the masks of this call).
  """
  num_new = positions.shape[1]
  at = cache.end
  slot_valid = jax.lax.dynamic_update_slice(
    cache.slot_valid, input_mask, (0, at)
  )
  slot_positions = jax.lax.dynamic_update_slice(
    cache.slot_positions, positions.astype(jnp.int32), (0, at)
  )
  q_slots = at + jnp.arange(num_new, dtype=jnp.int32)
  k_slots = jnp.arange(cache.size, dtype=jnp.int32)
  global_mask, local_mask = _masks(
    positions, q_slots, slot_positions, k_slots, slot_valid, window
  )
  last = jnp.max(jnp.where(input_mask, positions + 1, 0), axis=1)
  next_positions = jnp.maximum(cache.next_positions, last)
  cache = cache.replace(
    slot_valid=slot_valid,
    slot_positions=slot_positions,
    end=at + num_new,
    next_positions=next_positions.astype(jnp.int32),
  )
  prefix_global = prefix_local = None
  if prefix is not None:
    if positions.shape[0] % prefix.rows:
      raise ValueError(
        f"{positions.shape[0]} rows do not share {prefix.rows} prefixes"
      )
    prefix_global, prefix_local = _prefix_masks(prefix, positions, window)
  return cache, AttentionContext(
    global_mask, local_mask, at, prefix_global, prefix_local
  )
