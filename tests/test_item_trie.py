"""Item-identifier trie: allowed tokens, and constrained beam search on a tiny
random LLM against exhaustive scoring of every identifier."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ilm_jax.convert.frozen_llm import char_tokenizer, tiny_config
from ilm_jax.decode.beam_search import beam_search
from ilm_jax.decode.item_trie import (
  allowed_by_trie,
  build_item_trie,
  ranked_items,
  stacked_without,
  without_items,
)
from ilm_jax.models.llm import Decoder

TOK = char_tokenizer()
EOS = TOK.eos_ids[0]


def _sequences(identifiers):
  return [TOK.encode(s, add_bos=False) + [EOS] for s in identifiers]


def test_allowed_tokens_match_prefix_sets():
  ids = ["item_1001", "item_1002", "item_1010", "item_2345", "item_23"]
  seqs = _sequences(ids)
  trie = build_item_trie(seqs, 128)
  allowed_fn = jax.jit(trie.__call__)
  for seq in seqs:
    for t in range(len(seq) + 1):
      prefix = seq[:t]
      expected = {s[t] for s in seqs if len(s) > t and s[:t] == prefix}
      generated = np.zeros((1, 1, 12), np.int32)
      generated[0, 0, :t] = prefix
      allowed = np.asarray(allowed_fn(generated, jnp.int32(t)))[0, 0]
      assert set(np.flatnonzero(allowed)) == expected
  # off-trie prefixes allow nothing
  bad = np.zeros((1, 1, 12), np.int32)
  bad[0, 0, :2] = TOK.encode("xx", add_bos=False)
  assert not np.asarray(trie(jnp.asarray(bad), jnp.int32(2))).any()
  for item, seq in enumerate(seqs):
    assert trie.item_of(seq + [0, 0]) == item
  assert trie.item_of(seqs[0][:-1]) == -1


def test_rejects_duplicates_and_bad_tokens():
  with pytest.raises(ValueError, match="share token sequence"):
    build_item_trie([[5, 6, 2], [5, 6, 2]], 16)
  with pytest.raises(ValueError, match="prefix"):
    build_item_trie([[5, 6], [5, 6, 7]], 16)
  with pytest.raises(ValueError, match="must lie in"):
    build_item_trie([[5, 99]], 16)


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  decoder = Decoder(config)
  params = jax.jit(decoder.init)(
    jax.random.key(1), jnp.zeros((1, 4), jnp.int32)
  )
  # Sharper distributions than init's, so scores differ clearly.
  params = jax.tree.map(lambda p: p * 6.0, params["params"])
  return decoder, params


def _exhaustive(decoder, params, prompt, seqs):
  """Summed log-probability of every identifier sequence after prompt."""
  length = len(prompt) + max(len(s) for s in seqs)
  tokens = np.zeros((len(seqs), length), np.int32)
  for r, seq in enumerate(seqs):
    tokens[r, : len(prompt) + len(seq)] = prompt + seq
  logits = jax.jit(decoder.apply)({"params": params}, tokens).logits
  logp = np.asarray(jax.nn.log_softmax(logits, axis=-1))
  scores = []
  for r, seq in enumerate(seqs):
    pos = np.arange(len(prompt) - 1, len(prompt) - 1 + len(seq))
    scores.append(float(np.sum(logp[r, pos, np.asarray(seq)])))
  return np.asarray(scores)


def test_forced_prefix_is_the_shared_start_of_identifiers():
  trie = build_item_trie(_sequences(["item_12", "item_13", "item_2"]), 128)
  assert trie.forced_prefix == tuple(TOK.encode("item_", add_bos=False))
  trie = build_item_trie(_sequences(["item_12", "item_13"]), 128)
  assert trie.forced_prefix == tuple(TOK.encode("item_1", add_bos=False))
  # One identifier: the chain stops before the end token.
  trie = build_item_trie(_sequences(["ab"]), 128)
  assert trie.forced_prefix == tuple(TOK.encode("ab", add_bos=False))
  assert build_item_trie(_sequences(["a", "b"]), 128).forced_prefix == ()


@pytest.mark.parametrize("forced", [False, True], ids=["stepped", "forced"])
def test_constrained_beams_equal_exhaustive_top_k(tiny, forced):
  decoder, params = tiny
  rng = np.random.default_rng(0)
  # Eight identifiers of different lengths: with 10 beams nothing is pruned,
  # so beam search must reproduce the exhaustive ranking exactly.
  codes = rng.choice(np.arange(10, 10000), 8, replace=False)
  seqs = _sequences([f"item_{c}" for c in codes])
  trie = build_item_trie(seqs, 128)
  prompts = [
    TOK.encode("User 7 watched item_12, item_345.\nAnswer:"),
    TOK.encode("Next?"),
  ]
  width = max(len(p) for p in prompts)
  tokens = np.zeros((2, width), np.int32)
  mask = np.zeros((2, width), bool)
  for r, p in enumerate(prompts):
    tokens[r, : len(p)] = p  # right padding
    mask[r, : len(p)] = True
  beams = beam_search(
    decoder,
    params,
    jnp.asarray(tokens),
    prompt_mask=jnp.asarray(mask),
    num_beams=10,
    max_new_tokens=trie.max_length,
    allowed_fn=allowed_by_trie,
    constraint_data=trie.constraint_data,
    forced_tokens=trie.forced_prefix if forced else (),
  )
  ranked = ranked_items(trie, np.asarray(beams.tokens))
  for r, p in enumerate(prompts):
    exact = _exhaustive(decoder, params, p, seqs)
    order = np.argsort(-exact)
    assert list(ranked[r, :8]) == list(order)
    assert list(ranked[r, 8:]) == [-1, -1]  # only 8 identifiers exist
    np.testing.assert_allclose(
      np.asarray(beams.scores)[r, :8], exact[order], rtol=1e-4, atol=1e-4
    )


def _exhaustive_over_trie(decoder, params, prompt, seqs):
  """Summed log-probability of every identifier sequence after prompt, each
  step's softmax taken over the tokens that continue some identifier."""
  length = len(prompt) + max(len(s) for s in seqs)
  tokens = np.zeros((len(seqs), length), np.int32)
  for r, seq in enumerate(seqs):
    tokens[r, : len(prompt) + len(seq)] = prompt + seq
  logits = np.asarray(jax.jit(decoder.apply)({"params": params}, tokens).logits)
  scores = []
  for r, seq in enumerate(seqs):
    total = 0.0
    for t, token in enumerate(seq):
      allowed = sorted({s[t] for s in seqs if len(s) > t and s[:t] == seq[:t]})
      row = logits[r, len(prompt) - 1 + t, allowed]
      total += float(jax.nn.log_softmax(row)[allowed.index(token)])
    scores.append(total)
  return np.asarray(scores)


@pytest.mark.parametrize("forced", [False, True], ids=["stepped", "forced"])
def test_trie_softmax_beams_are_a_distribution_over_the_catalogue(tiny, forced):
  decoder, params = tiny
  rng = np.random.default_rng(3)
  codes = rng.choice(np.arange(10, 10000), 8, replace=False)
  seqs = _sequences([f"item_{c}" for c in codes])
  trie = build_item_trie(seqs, 128)
  prompt = TOK.encode("User 7 watched item_12, item_345.\nAnswer:")
  search = dict(
    num_beams=10,
    max_new_tokens=trie.max_length,
    allowed_fn=allowed_by_trie,
    constraint_data=trie.constraint_data,
    forced_tokens=trie.forced_prefix if forced else (),
  )
  tokens = jnp.asarray([prompt], jnp.int32)
  beams = beam_search(decoder, params, tokens, renormalize=True, **search)
  ranked = ranked_items(trie, np.asarray(beams.tokens))[0]
  exact = _exhaustive_over_trie(decoder, params, prompt, seqs)
  order = np.argsort(-exact)
  assert list(ranked[:8]) == list(order)
  scores = np.asarray(beams.scores)[0, :8]
  np.testing.assert_allclose(scores, exact[order], rtol=1e-4, atol=1e-4)
  # Every step normalised over the trie: the eight items' probabilities
  # sum to one, where the whole-vocabulary scores leave mass outside.
  np.testing.assert_allclose(jax.nn.logsumexp(scores), 0.0, atol=1e-4)
  plain = beam_search(decoder, params, tokens, **search)
  assert float(jax.nn.logsumexp(np.asarray(plain.scores)[0, :8])) < -0.1


def test_constrained_beams_only_spell_valid_identifiers(tiny):
  decoder, params = tiny
  codes = np.arange(1001, 1301)  # more identifiers than beams
  seqs = _sequences([f"item_{c}" for c in codes])
  trie = build_item_trie(seqs, 128)
  prompt = jnp.asarray([TOK.encode("Recommend an item:")] * 3)
  beams = beam_search(
    decoder,
    params,
    prompt,
    num_beams=10,
    max_new_tokens=trie.max_length,
    allowed_fn=allowed_by_trie,
    constraint_data=trie.constraint_data,
  )
  ranked = ranked_items(trie, np.asarray(beams.tokens))
  assert (ranked >= 0).all()  # every beam is an existing item, no repeats
  assert all(len(set(row)) == 10 for row in ranked)
  for row_tokens, row in zip(np.asarray(beams.tokens), ranked):
    for toks, item in zip(row_tokens, row):
      n = len(seqs[item])
      assert list(toks[:n]) == seqs[item]


def test_each_prompt_searches_without_its_own_items(tiny):
  decoder, params = tiny
  codes = np.arange(1001, 1031)
  seqs = _sequences([f"item_{c}" for c in codes])
  trie = build_item_trie(seqs, 128)
  prompt = jnp.asarray([TOK.encode("Recommend an item:")] * 3)
  search = dict(
    num_beams=10, max_new_tokens=trie.max_length, allowed_fn=allowed_by_trie
  )
  free = ranked_items(
    trie,
    np.asarray(
      beam_search(
        decoder, params, prompt, constraint_data=trie.constraint_data, **search
      ).tokens
    ),
  )
  # Prompt 0 may not name the free search's top 5, prompt 1 its items 1-20
  # (leaving exactly ten), prompt 2 anything but items 0-2.
  exclude = [free[0, :5], np.arange(1, 21), np.arange(3, 30)]
  stacked = stacked_without(trie, exclude)
  assert stacked.shape == (3,) + trie.transitions.shape
  beams = beam_search(
    decoder,
    params,
    prompt,
    constraint_data=(stacked, trie.column_of_token),
    **search,
  )
  ranked = ranked_items(trie, np.asarray(beams.tokens))
  for row, banned in zip(ranked, exclude):
    assert not set(row.tolist()) & set(np.asarray(banned).tolist())
  # Same prompt, so the rest keeps the free search's order: the pruned list
  # continues it past the banned items.
  np.testing.assert_array_equal(ranked[0, :5], free[0, 5:])
  assert set(ranked[1].tolist()) == {0, *range(21, 30)}
  assert sorted(ranked[2][ranked[2] >= 0].tolist()) == [0, 1, 2]
  assert (ranked[2, 3:] == -1).all()
  # A batch of one pruned table equals the single pruned trie's constraint.
  one = without_items(trie, exclude[1])
  generated = jnp.asarray(beams.tokens)[1:2, :, :4]
  np.testing.assert_array_equal(
    np.asarray(
      allowed_by_trie(
        generated, jnp.int32(4), (stacked[1:2], trie.column_of_token)
      )
    ),
    np.asarray(allowed_by_trie(generated, jnp.int32(4), one.constraint_data)),
  )


@pytest.mark.parametrize("width", [20, 40], ids=["appended", "in_padding"])
def test_forced_prefix_gives_the_stepped_search_when_beams_prune(tiny, width):
  """300 identifiers, 10 beams (pruning at every digit), soft and padded
  prompts of different lengths: feeding "item_1" once per prompt (after
  the longest prompt, 19 tokens, in 20 columns: appended ones; in 40: the
  padding) returns the beams, scores and lengths of stepping through it
  with W beams."""
  decoder, params = tiny
  seqs = _sequences([f"item_{c}" for c in np.arange(1001, 1301)])
  trie = build_item_trie(seqs, 128)
  assert trie.forced_prefix == tuple(TOK.encode("item_1", add_bos=False))
  prompts = [TOK.encode("Recommend an item:"), TOK.encode("Next?")]
  tokens = np.zeros((2, width), np.int32)
  mask = np.zeros((2, width), bool)
  for r, p in enumerate(prompts):
    tokens[r, : len(p)], mask[r, : len(p)] = p, True
  assert 20 - 6 < max(len(p) for p in prompts) <= 40 - 6
  x = decoder.apply({"params": params}, jnp.asarray(tokens), method="embed")
  kw = dict(
    prompt_embeddings=x,
    prompt_mask=jnp.asarray(mask),
    num_beams=10,
    max_new_tokens=trie.max_length,
    allowed_fn=allowed_by_trie,
    constraint_data=trie.constraint_data,
  )
  stepped = beam_search(decoder, params, **kw)
  forced = beam_search(decoder, params, forced_tokens=trie.forced_prefix, **kw)
  np.testing.assert_array_equal(forced.tokens, stepped.tokens)
  np.testing.assert_array_equal(forced.lengths, stepped.lengths)
  np.testing.assert_allclose(forced.scores, stepped.scores, atol=1e-4)
  with pytest.raises(ValueError, match="forced_tokens"):
    beam_search(decoder, params, forced_tokens=(EOS,), **kw)
