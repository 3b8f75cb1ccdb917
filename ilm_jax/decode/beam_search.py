"""Batched beam search with a hook that restricts each beam's next tokens.

The prompt is prefilled once per row and then every step extends each beam
by one token, keeping the W best of the W x V candidates by summed
log-probability. A finished beam (it emitted an end token) keeps its score
and only "extends" by padding.

The prompt's cache is kept once per row, shared by the row's W beams
(``kv_cache.SharedPrefix``); each beam's own cache holds only its generated
tokens. So reordering beams after a step gathers N slots per beam rather
than the prompt's L + N, and attention reads each prompt's keys and values
once per row rather than once per beam.

Constraints: ``allowed_fn(generated, step, data)`` receives int32[B, W, N],
the tokens each beam has generated so far (``pad_id`` beyond ``step``), the
step int32[], and ``constraint_data`` (any pytree of arrays, passed through
jit as a traced argument, so a new catalogue does not recompile), and returns
bool[B, W, V] (True = allowed) or a float[B, W, V] additive mask. It runs
inside jit, so it must be written in jax ops; a prefix trie of item
identifiers stored as arrays plugs in here.

Forced tokens: when the constraint allows a single path for the first K
tokens (every item identifier starts "item_"), ``forced_tokens`` feeds them
once per prompt, right after it (over its right padding where every row has
room, else in K appended columns), in the prefill, instead of spending K
steps of W beams on one live beam each; their log-probabilities (under the
constraint) still count in every beam's score, so the result is the same.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ilm_jax.decode.prefill import decode_step, last_real_index
from ilm_jax.models.llm.decoder import Decoder
from ilm_jax.models.llm.kv_cache import KVCache, init_cache, shared_prefix

AllowedFn = Callable[[jax.Array, jax.Array, object], jax.Array]


@struct.dataclass
class Beams:
  """Finished beams, best first.

  Attributes:
    tokens: int32[B, W, N] generated tokens (``pad_id`` after the end).
    scores: float32[B, W] summed log-probabilities, length-normalised when
      ``length_penalty`` > 0; -inf for beams that had no allowed token.
    lengths: int32[B, W] tokens per beam, end token included.
  """

  tokens: jax.Array
  scores: jax.Array
  lengths: jax.Array


def _apply_constraint(logprobs, allowed, renormalize=False):
  """``logprobs`` float32[..., V] under the constraint ``allowed``; with
  ``renormalize``, as a distribution over the allowed tokens only (rows
  that allow none stay at -inf)."""
  if allowed.dtype == jnp.bool_:
    logprobs = jnp.where(allowed, logprobs, -jnp.inf)
  else:
    logprobs = logprobs + allowed.astype(logprobs.dtype)
  if not renormalize:
    return logprobs
  total = jax.nn.logsumexp(logprobs, axis=-1, keepdims=True)
  return jnp.where(jnp.isfinite(total), logprobs - total, -jnp.inf)


def _select_rows(cache: KVCache, rows: jax.Array) -> KVCache:
  """The cache of the given batch rows (beams), e.g. after reordering."""
  return cache.replace(
    keys=tuple(k[rows] for k in cache.keys),
    values=tuple(v[rows] for v in cache.values),
    slot_valid=cache.slot_valid[rows],
    slot_positions=cache.slot_positions[rows],
    next_positions=cache.next_positions[rows],
  )


def _has_room(prompt_mask, k: int) -> bool:
  """Whether every row of a concrete bool[B, T] mask has K padding slots
  after its last real token (a traced mask: unknown, so False)."""
  if prompt_mask is None or isinstance(prompt_mask, jax.core.Tracer):
    return False
  mask = np.asarray(prompt_mask, bool)
  last = np.max(np.where(mask, np.arange(mask.shape[1]), -1), axis=1)
  return bool(np.all(last + k < mask.shape[1]))


def _with_forced(
  decoder,
  params,
  prompt_tokens,
  prompt_embeddings,
  prompt_mask,
  forced,
  in_padding,
):
  """The prompts with K forced tokens right after each row's last real one.

  One prefill then covers prompt and forced tokens (a separate call of K
  tokens would run every layer on a few rows).

  Args:
    in_padding: every row has K padding slots after its last real token
      (``_has_room``): the forced tokens go there; else K columns are
      appended.

  Returns:
    (tokens int32[B, T'] or None, embeddings float[B, T', D] or None, mask
    bool[B, T'], int32[B, K + 1] indices of the logits before each forced
    token and after the last); T' = T, or T + K without room.
  """
  prompt = prompt_tokens if prompt_tokens is not None else prompt_embeddings
  batch, length = prompt.shape[:2]
  k = len(forced)
  extra = 0 if in_padding else k
  if prompt_mask is None:
    prompt_mask = jnp.ones((batch, length), bool)
  last = last_real_index(prompt_mask.astype(bool))
  # [B, K] where the forced tokens go: after the last real token, over
  # right padding or into the K appended columns.
  at = last[:, None] + 1 + jnp.arange(k, dtype=jnp.int32)
  rows = jnp.arange(batch)[:, None]
  forced = jnp.broadcast_to(jnp.asarray(forced, jnp.int32), (batch, k))
  mask = jnp.pad(prompt_mask.astype(bool), ((0, 0), (0, extra)))
  mask = mask.at[rows, at].set(True)
  if prompt_tokens is not None:
    prompt_tokens = jnp.pad(prompt_tokens, ((0, 0), (0, extra)))
    prompt_tokens = prompt_tokens.at[rows, at].set(forced)
  else:
    embedded = decoder.apply(
      {"params": params}, forced, method=decoder.embed
    ).astype(prompt_embeddings.dtype)
    prompt_embeddings = jnp.pad(prompt_embeddings, ((0, 0), (0, extra), (0, 0)))
    prompt_embeddings = prompt_embeddings.at[rows, at].set(embedded)
  logits_at = jnp.concatenate([last[:, None], at], axis=1)
  return prompt_tokens, prompt_embeddings, mask, logits_at


@functools.partial(
  jax.jit,
  static_argnames=(
    "decoder",
    "num_beams",
    "max_new_tokens",
    "eos_ids",
    "pad_id",
    "allowed_fn",
    "length_penalty",
    "forced_tokens",
    "forced_in_padding",
    "renormalize",
  ),
)
def _beam_search(
  decoder,
  params,
  prompt_tokens,
  prompt_embeddings,
  prompt_mask,
  constraint_data,
  *,
  num_beams,
  max_new_tokens,
  eos_ids,
  pad_id,
  allowed_fn,
  length_penalty,
  forced_tokens,
  forced_in_padding,
  renormalize,
):
  prompt = prompt_tokens if prompt_tokens is not None else prompt_embeddings
  batch, length = prompt.shape[:2]
  width, steps = num_beams, max_new_tokens
  num_forced = len(forced_tokens)
  if num_forced:
    prompt_tokens, prompt_embeddings, prompt_mask, logits_at = _with_forced(
      decoder,
      params,
      prompt_tokens,
      prompt_embeddings,
      prompt_mask,
      forced_tokens,
      forced_in_padding,
    )
    length = prompt_mask.shape[1]
  else:
    if prompt_mask is None:
      prompt_mask = jnp.ones((batch, length), bool)
    logits_at = last_real_index(prompt_mask)[:, None]
  out = decoder.apply(
    {"params": params},
    prompt_tokens,
    embeddings=prompt_embeddings,
    input_mask=prompt_mask,
    cache=init_cache(decoder.config, batch, length, decoder.dtype),
    logits_at=logits_at,
  )  # logits float32[B, K + 1, V]: before each forced token, then after
  prompt_cache = out.cache
  tokens = jnp.full((batch, width, steps), pad_id, jnp.int32)
  forced_score = jnp.zeros((batch,), jnp.float32)
  logprobs = jax.nn.log_softmax(out.logits[:, :num_forced], axis=-1)
  for i, token in enumerate(forced_tokens):
    lp = logprobs[:, i]
    if allowed_fn is not None:
      lp = _apply_constraint(
        lp[:, None],
        allowed_fn(tokens[:, :1], jnp.asarray(i, jnp.int32), constraint_data),
        renormalize,
      )[:, 0]
    forced_score = forced_score + lp[:, token]
    tokens = tokens.at[:, :, i].set(token)
  logits = out.logits[:, -1]
  prefix = shared_prefix(prompt_cache)
  # Each beam's own cache: its generated tokens after the forced ones,
  # positioned after its row's prompt.
  cache = init_cache(
    decoder.config,
    batch * width,
    max(steps - num_forced, 1),
    prompt_cache.keys[0].dtype,
  )
  cache = cache.replace(
    next_positions=jnp.repeat(prompt_cache.next_positions, width)
  )
  vocab = logits.shape[-1]
  eos = jnp.asarray(eos_ids, jnp.int32)
  # Identical beams would fill the top-W with duplicates: all but one start
  # at -inf, so the first step picks W distinct tokens of the row.
  scores = jnp.where(jnp.arange(width) == 0, forced_score[:, None], -jnp.inf)
  state = dict(
    step=jnp.asarray(num_forced, jnp.int32),
    logits=jnp.repeat(logits, width, axis=0).reshape(batch, width, vocab),
    cache=cache,
    scores=scores.astype(jnp.float32),
    done=jnp.zeros((batch, width), bool),
    tokens=tokens,
    lengths=jnp.full((batch, width), num_forced, jnp.int32),
  )

  def not_finished(s):
    return (s["step"] < steps) & ~jnp.all(s["done"])

  def step(s):
    logprobs = jax.nn.log_softmax(s["logits"], axis=-1)
    if allowed_fn is not None:
      logprobs = _apply_constraint(
        logprobs,
        allowed_fn(s["tokens"], s["step"], constraint_data),
        renormalize,
      )
    # A finished beam has exactly one continuation, padding, at no cost.
    finished_row = jnp.where(jnp.arange(vocab) == pad_id, 0.0, -jnp.inf)
    logprobs = jnp.where(s["done"][..., None], finished_row, logprobs)
    candidates = (s["scores"][..., None] + logprobs).reshape(batch, -1)
    scores, flat = jax.lax.top_k(candidates, width)
    parent = flat // vocab
    token = (flat % vocab).astype(jnp.int32)

    def pick(x):
      return jnp.take_along_axis(
        x, parent.reshape(batch, width, *[1] * (x.ndim - 2)), axis=1
      )

    was_done = pick(s["done"])
    tokens = pick(s["tokens"])
    tokens = jax.lax.dynamic_update_slice(
      tokens, token[..., None], (0, 0, s["step"])
    )
    lengths = pick(s["lengths"]) + (~was_done).astype(jnp.int32)
    done = was_done | jnp.isin(token, eos)
    rows = (jnp.arange(batch)[:, None] * width + parent).reshape(-1)
    cache = _select_rows(s["cache"], rows)

    def advance(cache):
      logits, cache = decode_step(
        decoder,
        params,
        token.reshape(-1),
        ~was_done.reshape(-1),
        cache,
        prefix,
      )
      return logits.reshape(batch, width, vocab), cache

    def stop(cache):
      return s["logits"], cache

    # After the last step, or once every beam ended, nothing reads the next
    # logits: skip the forward (a real branch on CPU and accelerators).
    more = (s["step"] + 1 < steps) & ~jnp.all(done)
    logits, cache = jax.lax.cond(more, advance, stop, cache)
    return dict(
      step=s["step"] + 1,
      logits=logits,
      cache=cache,
      scores=scores,
      done=done,
      tokens=tokens,
      lengths=lengths,
    )

  state = jax.lax.while_loop(not_finished, step, state)
  scores = state["scores"]
  if length_penalty > 0:
    norm = jnp.maximum(state["lengths"], 1).astype(jnp.float32)
    scores = scores / norm**length_penalty
  order = jnp.argsort(-scores, axis=1)
  take = lambda x: jnp.take_along_axis(
    x, order.reshape(batch, width, *[1] * (x.ndim - 2)), axis=1
  )
  return Beams(
    tokens=take(state["tokens"]),
    scores=take(scores),
    lengths=take(state["lengths"]),
  )


def beam_search(
  decoder: Decoder,
  params,
  prompt_tokens: jax.Array | None = None,
  *,
  prompt_embeddings: jax.Array | None = None,
  prompt_mask: jax.Array | None = None,
  num_beams: int = 4,
  max_new_tokens: int = 16,
  allowed_fn: AllowedFn | None = None,
  constraint_data=None,
  length_penalty: float = 0.0,
  eos_ids: Sequence[int] | None = None,
  pad_id: int | None = None,
  forced_tokens: Sequence[int] = (),
  renormalize: bool = False,
) -> Beams:
  """The ``num_beams`` best continuations of each prompt.

  Args:
    decoder: the Decoder module.
    params: its parameters.
    prompt_tokens: int32[B, T] prompt ids; or ``prompt_embeddings``
      float[B, T, D].
    prompt_mask: bool[B, T] real prompt tokens; left or right padding.
    num_beams: W beams per prompt (at most the vocabulary size).
    max_new_tokens: N, most tokens per beam.
    allowed_fn: optional constraint hook, see the module docstring. It is a
      static argument: pass the same (hashable) function to reuse the
      compiled search.
    constraint_data: pytree of arrays handed to ``allowed_fn``.
    length_penalty: final scores are divided by ``length ** length_penalty``
      (0: raw summed log-probabilities).
    eos_ids: ids that end a beam (default: the config's ``eos_ids``).
    pad_id: fills a beam after its end (default: the config's ``pad_id``).
    forced_tokens: K < N tokens every beam starts with (e.g.
      ``ItemTrie.forced_prefix``), fed once per prompt; no end tokens. Give
      them only where the constraint leaves no other choice: then the
      result equals the search without them, fewer steps of W beams.
    renormalize: score each step by a softmax over the tokens the
      constraint allows (the model's distribution given that it names an
      allowed sequence) instead of over the whole vocabulary, so mass the
      model puts outside the constraint no longer penalises a prefix.

  Returns:
    Beams (tokens int32[B, W, N], scores float32[B, W], lengths int32[B, W]),
    sorted best first.
  """
  if (prompt_tokens is None) == (prompt_embeddings is None):
    raise ValueError("beam_search: pass exactly one of tokens or embeddings")
  config = decoder.config
  if not 1 <= num_beams <= config.vocab_size:
    raise ValueError(f"beam_search: num_beams={num_beams} out of range")
  eos_ids = tuple(config.eos_ids if eos_ids is None else eos_ids)
  forced_tokens = tuple(int(t) for t in forced_tokens)
  if len(forced_tokens) >= max_new_tokens or set(forced_tokens) & set(eos_ids):
    raise ValueError(
      f"beam_search: forced_tokens {forced_tokens} must be fewer than "
      f"max_new_tokens={max_new_tokens} and hold no end token"
    )
  return _beam_search(
    decoder,
    params,
    prompt_tokens,
    prompt_embeddings,
    prompt_mask,
    constraint_data,
    num_beams=num_beams,
    max_new_tokens=max_new_tokens,
    eos_ids=eos_ids,
    pad_id=int(config.pad_id if pad_id is None else pad_id),
    allowed_fn=allowed_fn,
    length_penalty=float(length_penalty),
    forced_tokens=forced_tokens,
    forced_in_padding=_has_room(prompt_mask, len(forced_tokens)),
    renormalize=bool(renormalize),
  )
