"""Jitted KV-cache generation: greedy, or temperature / top-p sampling.

The whole loop (prefill, then one token per step until every row has emitted
an end-of-sequence id or ``max_new_tokens`` are out) is one ``jax.jit``
program; a ``lax.while_loop`` stops early once all rows are done.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import struct

from ilm_jax.decode.prefill import decode_step, prefill
from ilm_jax.models.llm.decoder import Decoder


@struct.dataclass
class Generation:
  """Generated continuations.

  Attributes:
    tokens: int32[B, N], new tokens; after a row's end token, ``pad_id``.
    lengths: int32[B], tokens generated per row, end token included.
  """

  tokens: jax.Array
  lengths: jax.Array


def top_p_filter(logits: jax.Array, top_p: float) -> jax.Array:
  """Keeps the smallest set of tokens whose probability reaches ``top_p``.

  Args:
    logits: float32[B, V].
    top_p: nucleus mass in (0, 1].

  Returns:
    float32[B, V], logits outside the nucleus set to -inf.
  """
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  keep_sorted = mass_before < top_p  # the most likely token always stays
  keep = (
    jnp.zeros_like(keep_sorted)
    .at[jnp.arange(logits.shape[0])[:, None], order]
    .set(keep_sorted)
  )
  return jnp.where(keep, logits, -jnp.inf)


def choose_tokens(
  logits: jax.Array, rng: jax.Array, temperature: float, top_p: float
) -> jax.Array:
  """int32[B] next tokens: argmax when temperature is 0, else a sample."""
  if temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_p < 1.0:
    logits = top_p_filter(logits, top_p)
  return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


@functools.partial(
  jax.jit,
  static_argnames=(
    "decoder",
    "max_new_tokens",
    "temperature",
    "top_p",
    "eos_ids",
    "pad_id",
  ),
)
def _generate(
  decoder,
  params,
  prompt_tokens,
  prompt_embeddings,
  prompt_mask,
  rng,
  *,
  max_new_tokens,
  temperature,
  top_p,
  eos_ids,
  pad_id,
):
  prompt = prompt_tokens if prompt_tokens is not None else prompt_embeddings
  batch, length = prompt.shape[:2]
  logits, cache = prefill(
    decoder,
    params,
    prompt_tokens,
    prompt_embeddings,
    prompt_mask,
    cache_size=length + max_new_tokens,
  )
  eos = jnp.asarray(eos_ids, jnp.int32)
  state = dict(
    step=jnp.zeros((), jnp.int32),
    logits=logits,
    cache=cache,
    done=jnp.zeros((batch,), bool),
    tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
    lengths=jnp.zeros((batch,), jnp.int32),
    rng=rng,
  )

  def not_finished(s):
    return (s["step"] < max_new_tokens) & ~jnp.all(s["done"])

  def step(s):
    rng, key = jax.random.split(s["rng"])
    token = choose_tokens(s["logits"], key, temperature, top_p)
    token = jnp.where(s["done"], pad_id, token)
    tokens = jax.lax.dynamic_update_slice(
      s["tokens"], token[:, None], (0, s["step"])
    )
    lengths = s["lengths"] + (~s["done"]).astype(jnp.int32)
    is_real = ~s["done"]
    done = s["done"] | jnp.isin(token, eos)
    logits, cache = decode_step(decoder, params, token, is_real, s["cache"])
    return dict(
      step=s["step"] + 1,
      logits=logits,
      cache=cache,
      done=done,
      tokens=tokens,
      lengths=lengths,
      rng=rng,
    )

  state = jax.lax.while_loop(not_finished, step, state)
  return Generation(tokens=state["tokens"], lengths=state["lengths"])


def generate(
  decoder: Decoder,
  params,
  prompt_tokens: jax.Array | None = None,
  *,
  prompt_embeddings: jax.Array | None = None,
  prompt_mask: jax.Array | None = None,
  max_new_tokens: int = 32,
  temperature: float = 0.0,
  top_p: float = 1.0,
  rng: jax.Array | None = None,
  eos_ids: Sequence[int] | None = None,
  pad_id: int | None = None,
) -> Generation:
  """Continues a batch of prompts.

  Args:
    decoder: the Decoder module (static: one compile per module/shape).
    params: its parameters.
    prompt_tokens: int32[B, T] prompt ids; or give ``prompt_embeddings``
      float[B, T, D] (e.g. word embeddings with soft item tokens).
    prompt_mask: bool[B, T] real prompt tokens; left or right padding.
    max_new_tokens: N, most tokens generated per row.
    temperature: 0 is greedy; otherwise logits are divided by it and sampled.
    top_p: nucleus sampling mass (1.0: the whole distribution).
    rng: PRNG key for sampling (unused when greedy).
    eos_ids: ids that end a row (default: the config's ``eos_ids``).
    pad_id: fills a row after its end (default: the config's ``pad_id``).

  Returns:
    A Generation (tokens int32[B, N], lengths int32[B]).
  """
  if (prompt_tokens is None) == (prompt_embeddings is None):
    raise ValueError("generate: pass exactly one of tokens or embeddings")
  if temperature < 0 or not 0 < top_p <= 1:
    raise ValueError(f"generate: bad temperature={temperature} top_p={top_p}")
  config = decoder.config
  return _generate(
    decoder,
    params,
    prompt_tokens,
    prompt_embeddings,
    prompt_mask,
    jax.random.key(0) if rng is None else rng,
    max_new_tokens=max_new_tokens,
    temperature=float(temperature),
    top_p=float(top_p),
    eos_ids=tuple(config.eos_ids if eos_ids is None else eos_ids),
    pad_id=int(config.pad_id if pad_id is None else pad_id),
  )
