"""Cached generation and beam search against uncached, exhaustive references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.decode.beam_search import beam_search
from ilm_jax.decode.prefill import decode_step, prefill
from ilm_jax.decode.sampling import generate, top_p_filter
from ilm_jax.models.llm import Decoder, LlmConfig
from ilm_jax.models.llm.config import GLOBAL, LOCAL
from ilm_jax.models.llm.kv_cache import init_cache, shared_prefix

VOCAB = 16
CONFIG = LlmConfig(
  vocab_size=VOCAB,
  embed_dim=32,
  mlp_dim=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  tie_embeddings=False,
  eos_ids=(15,),
  pad_id=0,
)
DECODER = Decoder(CONFIG)


@pytest.fixture(scope="module")
def params():
  variables = jax.jit(DECODER.init)(
    jax.random.key(0), jnp.zeros((1, 4), jnp.int32)
  )
  # Larger weights than init's, so that the distributions are peaked enough
  # for ties to be impossible and the greedy path is not constant.
  return jax.tree.map(lambda p: p * 8.0, variables["params"])


# Two prompts of different lengths, left-padded to a common width.
PROMPTS = [[3, 7, 1, 9, 4], [5, 2]]
WIDTH = 5


def _left_padded():
  tokens = np.zeros((len(PROMPTS), WIDTH), np.int32)
  mask = np.zeros((len(PROMPTS), WIDTH), bool)
  for row, prompt in enumerate(PROMPTS):
    tokens[row, WIDTH - len(prompt) :] = prompt
    mask[row, WIDTH - len(prompt) :] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _sequence_logprobs(params, prompt, continuations):
  """Summed log-probability of each continuation, one batched forward."""
  tokens = jnp.asarray([list(prompt) + list(c) for c in continuations])
  logits = DECODER.apply({"params": params}, tokens).logits
  logprobs = jax.nn.log_softmax(logits, axis=-1)
  start, steps = len(prompt) - 1, len(continuations[0])
  picked = jnp.take_along_axis(
    logprobs[:, start : start + steps], tokens[:, start + 1 :, None], axis=2
  )
  sums = np.asarray(picked.sum(axis=(1, 2)))
  return dict(zip(map(tuple, continuations), sums.tolist()))


@jax.jit
def _last_logits(params, tokens, length):
  """Uncached forward of right-padded int32[1, L]; logits at length - 1."""
  mask = jnp.arange(tokens.shape[1])[None] < length
  out = DECODER.apply(
    {"params": params},
    tokens,
    input_mask=mask,
    logits_at=jnp.reshape(length - 1, (1, 1)),
  )
  return out.logits[0, 0]


def _naive_greedy(params, prompt, steps, eos):
  """Greedy decoding that reruns the whole sequence for every token."""
  sequence = np.zeros((1, len(prompt) + steps), np.int32)
  sequence[0, : len(prompt)] = prompt
  out = []
  for _ in range(steps):
    length = len(prompt) + len(out)
    token = int(jnp.argmax(_last_logits(params, sequence, length)))
    sequence[0, length] = token
    out.append(token)
    if token in eos:
      break
  return out


def test_greedy_matches_uncached_loop(params):
  tokens, mask = _left_padded()
  steps = 8
  result = generate(
    DECODER, params, tokens, prompt_mask=mask, max_new_tokens=steps
  )
  for row, prompt in enumerate(PROMPTS):
    expected = _naive_greedy(params, prompt, steps, CONFIG.eos_ids)
    length = int(result.lengths[row])
    assert result.tokens[row, :length].tolist() == expected
    assert all(t == CONFIG.pad_id for t in result.tokens[row, length:].tolist())


def test_right_padding_and_embeddings_prompt_give_same_result(params):
  tokens, mask = _left_padded()
  left = generate(DECODER, params, tokens, prompt_mask=mask, max_new_tokens=6)
  right_tokens = np.zeros((2, WIDTH), np.int32)
  right_mask = np.zeros((2, WIDTH), bool)
  for row, prompt in enumerate(PROMPTS):
    right_tokens[row, : len(prompt)] = prompt
    right_mask[row, : len(prompt)] = True
  right = generate(
    DECODER,
    params,
    jnp.asarray(right_tokens),
    prompt_mask=jnp.asarray(right_mask),
    max_new_tokens=6,
  )
  np.testing.assert_array_equal(left.tokens, right.tokens)
  embedded = DECODER.apply({"params": params}, tokens, method=Decoder.embed)
  soft = generate(
    DECODER,
    params,
    prompt_embeddings=embedded,
    prompt_mask=mask,
    max_new_tokens=6,
  )
  np.testing.assert_array_equal(left.tokens, soft.tokens)


def test_generation_stops_at_end_token(params):
  tokens, mask = _left_padded()
  first = generate(DECODER, params, tokens, prompt_mask=mask, max_new_tokens=1)
  stop = int(first.tokens[0, 0])
  result = generate(
    DECODER,
    params,
    tokens,
    prompt_mask=mask,
    max_new_tokens=6,
    eos_ids=(stop,),
  )
  assert int(result.lengths[0]) == 1
  assert result.tokens[0, 1:].tolist() == [CONFIG.pad_id] * 5


def test_sampling_is_seeded_and_tiny_top_p_is_greedy(params):
  tokens, mask = _left_padded()
  kw = dict(prompt_mask=mask, max_new_tokens=8, temperature=1.5)
  a = generate(DECODER, params, tokens, rng=jax.random.key(1), **kw)
  b = generate(DECODER, params, tokens, rng=jax.random.key(1), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  seeds = [
    generate(DECODER, params, tokens, rng=jax.random.key(s), **kw).tokens
    for s in range(2, 6)
  ]
  assert any(not np.array_equal(seeds[0], s) for s in seeds[1:])
  greedy = generate(DECODER, params, tokens, prompt_mask=mask, max_new_tokens=8)
  nucleus = generate(
    DECODER, params, tokens, rng=jax.random.key(3), top_p=1e-6, **kw
  )
  np.testing.assert_array_equal(greedy.tokens, nucleus.tokens)


def test_top_p_filter_keeps_the_nucleus():
  logits = jnp.log(jnp.asarray([[0.5, 0.1, 0.3, 0.1]]))
  kept = np.isfinite(np.asarray(top_p_filter(logits, 0.75)))
  assert kept.tolist() == [[True, False, True, False]]
  assert np.isfinite(np.asarray(top_p_filter(logits, 0.4))).sum() == 1


def test_wide_beam_search_equals_exhaustive_scoring(params):
  """With W = V beams, two steps of beam search are exhaustive."""
  tokens, mask = _left_padded()
  beams = beam_search(
    DECODER,
    params,
    tokens,
    prompt_mask=mask,
    num_beams=VOCAB,
    max_new_tokens=2,
    eos_ids=(),
  )
  for row, prompt in enumerate(PROMPTS):
    pairs = list(itertools.product(range(VOCAB), repeat=2))
    scored = _sequence_logprobs(params, prompt, pairs)
    best = sorted(scored, key=scored.get, reverse=True)[:VOCAB]
    got = [tuple(t) for t in beams.tokens[row].tolist()]
    assert got == best
    # float32 sums in another order (cached decoding against one forward,
    # and another CPU's vector width) differ by a few 1e-5 relative.
    np.testing.assert_allclose(
      beams.scores[row], [scored[p] for p in best], rtol=1e-4, atol=1e-4
    )


# A toy catalogue of 3-token identifiers, as a later prefix trie would hold.
VALID = np.asarray(
  [[3, 4, 5], [3, 4, 6], [3, 8, 1], [7, 2, 2], [7, 9, 4], [11, 1, 1]],
  np.int32,
)


def allowed_by_catalogue(generated, step, valid):
  """bool[B, W, V]: next tokens that keep a beam a prefix of ``valid``."""
  positions = jnp.arange(valid.shape[1])
  # [B, W, M]: identifier m agrees with the beam on every generated token.
  agree = jnp.all(
    (generated[:, :, None, :] == valid[None, None, :, :])
    | (positions >= step)[None, None, None, :],
    axis=-1,
  )
  next_token = jnp.take(valid, jnp.minimum(step, valid.shape[1] - 1), axis=1)
  one_hot = jax.nn.one_hot(next_token, VOCAB, dtype=bool)  # [M, V]
  return jnp.any(agree[..., None] & one_hot[None, None], axis=2)


def test_constrained_beam_search_returns_top_valid_identifiers(params):
  tokens, mask = _left_padded()
  beams = beam_search(
    DECODER,
    params,
    tokens,
    prompt_mask=mask,
    num_beams=len(VALID),
    max_new_tokens=3,
    allowed_fn=allowed_by_catalogue,
    constraint_data=jnp.asarray(VALID),
    eos_ids=(),
  )
  valid = {tuple(v) for v in VALID.tolist()}
  for row, prompt in enumerate(PROMPTS):
    got = [tuple(t) for t in beams.tokens[row].tolist()]
    assert set(got) <= valid
    scored = _sequence_logprobs(params, prompt, sorted(valid))
    # As many beams as identifiers: the search must rank all of them exactly.
    assert got == sorted(scored, key=scored.get, reverse=True)
    np.testing.assert_allclose(
      beams.scores[row], [scored[g] for g in got], atol=1e-4
    )


def test_constrained_beam_search_prunes_to_valid_prefixes(params):
  tokens, mask = _left_padded()
  beams = beam_search(
    DECODER,
    params,
    tokens,
    prompt_mask=mask,
    num_beams=2,
    max_new_tokens=3,
    allowed_fn=allowed_by_catalogue,
    constraint_data=jnp.asarray(VALID),
    eos_ids=(),
  )
  valid = {tuple(v) for v in VALID.tolist()}
  assert {tuple(t) for t in beams.tokens.reshape(-1, 3).tolist()} <= valid
  assert np.all(np.diff(np.asarray(beams.scores), axis=1) <= 0)


def _right_padded_embeddings(params):
  tokens = np.zeros((len(PROMPTS), WIDTH), np.int32)
  mask = np.zeros((len(PROMPTS), WIDTH), bool)
  for row, prompt in enumerate(PROMPTS):
    tokens[row, : len(prompt)] = prompt
    mask[row, : len(prompt)] = True
  embedded = DECODER.apply(
    {"params": params}, jnp.asarray(tokens), method=Decoder.embed
  )
  return embedded, jnp.asarray(mask)


def test_wide_beam_search_with_end_token_equals_exhaustive_scoring(params):
  """Beams that end after one token keep their score and slot: with W = V,
  two steps are exhaustive over {(eos,)} and every (a, b) with a != eos.
  The prompts are soft (embeddings), right-padded."""
  embedded, mask = _right_padded_embeddings(params)
  # The end token: the likeliest first token of both prompts together, so
  # that ended beams do make the top W.
  first = [
    _sequence_logprobs(params, p, [(t,) for t in range(VOCAB)]) for p in PROMPTS
  ]
  eos = max(range(VOCAB), key=lambda t: sum(f[(t,)] for f in first))
  beams = beam_search(
    DECODER,
    params,
    prompt_embeddings=embedded,
    prompt_mask=mask,
    num_beams=VOCAB,
    max_new_tokens=2,
    eos_ids=(eos,),
  )
  for row, prompt in enumerate(PROMPTS):
    pairs = [
      p for p in itertools.product(range(VOCAB), repeat=2) if p[0] != eos
    ]
    scored = _sequence_logprobs(params, prompt, pairs)
    scored[(eos, CONFIG.pad_id)] = first[row][(eos,)]
    best = sorted(scored, key=scored.get, reverse=True)[:VOCAB]
    assert (eos, CONFIG.pad_id) in best  # the test covers an ended beam
    got = [tuple(t) for t in beams.tokens[row].tolist()]
    assert got == best
    # float32 sums in another order (cached decoding against one forward,
    # and another CPU's vector width) differ by a few 1e-5 relative.
    np.testing.assert_allclose(
      beams.scores[row], [scored[p] for p in best], rtol=1e-4, atol=1e-4
    )
    lengths = [1 if p[0] == eos else 2 for p in best]
    assert beams.lengths[row].tolist() == lengths


# Gemma-like: local (sliding-window) and global layers, soft-capped
# attention, q/k norms: every mask and logit path of a shared prefix.
LOCAL_CONFIG = LlmConfig(
  vocab_size=VOCAB,
  embed_dim=32,
  mlp_dim=48,
  num_layers=2,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  qk_norm=True,
  attn_softcap=5.0,
  layer_types=(LOCAL, GLOBAL),
  sliding_window=3,
  eos_ids=(15,),
  pad_id=0,
)


@pytest.mark.parametrize(
  "config", [CONFIG, LOCAL_CONFIG], ids=["llama", "local"]
)
def test_shared_prefix_decoding_equals_copied_prompt_cache(config):
  """Rows reading their prompt through a SharedPrefix get the logits of rows
  that hold a copy of the prompt's cache, step after step."""
  decoder = Decoder(config)
  tokens, mask = _left_padded()
  variables = jax.jit(decoder.init)(jax.random.key(2), tokens)
  params = jax.tree.map(lambda p: p * 4.0, variables["params"])
  group, steps = 3, 4
  batch = tokens.shape[0]
  logits, prompt = prefill(decoder, params, tokens, None, mask, WIDTH + steps)
  rows = jnp.repeat(jnp.arange(batch), group)
  copied = jax.tree.map(lambda x: x[rows] if x.ndim else x, prompt)
  _, short = prefill(decoder, params, tokens, None, mask, WIDTH)
  prefix = shared_prefix(short)
  own = init_cache(config, batch * group, steps).replace(
    next_positions=short.next_positions[rows]
  )
  step = jax.jit(decode_step, static_argnums=0)
  rng = np.random.default_rng(0)
  for t in range(steps):
    next_tokens = jnp.asarray(rng.integers(1, VOCAB, batch * group), jnp.int32)
    # A row that ended feeds padding from then on.
    is_real = jnp.asarray(np.arange(batch * group) % group != t % group)
    want, copied = step(decoder, params, next_tokens, is_real, copied)
    got, own = step(decoder, params, next_tokens, is_real, own, prefix)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert logits.shape == (batch, VOCAB)
