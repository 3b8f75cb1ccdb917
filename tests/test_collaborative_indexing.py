"""Collaborative identifiers: items close in CF space share prefixes."""

import dataclasses

import numpy as np
import pytest

from ilm_jax.convert.gguf_tokenizer import load_gguf_tokenizer
from ilm_jax.convert.model_packages import smollm2_gguf_path
from ilm_jax.data import load_split
from ilm_jax.data.indexing import (
  BRANCHES,
  collaborative_indexing,
  make_index,
)
from ilm_jax.data.stage2.encoding import EntityCoding, PromptEncoder
from ilm_jax.experiment_config import get_config
from ilm_jax.pipeline import stage2
from ilm_jax.pipeline.cf import cf_table


def _clustered_vectors(seed=0, groups=12, per_group=30, dim=8):
  """Tight groups far apart: the ground truth the tree should find."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(scale=10.0, size=(groups, dim))
  vectors = np.repeat(centers, per_group, 0)
  vectors += rng.normal(scale=0.01, size=vectors.shape)
  return vectors, np.repeat(np.arange(groups), per_group)


def _shared_prefix(a: str, b: str) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def test_codes_are_distinct_equally_long_and_deterministic():
  vectors, _ = _clustered_vectors()
  index = collaborative_indexing(vectors, seed=3)
  codes = [str(c) for c in index.codes]
  assert len(set(codes)) == len(codes)
  assert len({len(c) for c in codes}) == 1 and all(c[0] == "1" for c in codes)
  np.testing.assert_array_equal(
    index.codes, collaborative_indexing(vectors, seed=3).codes
  )
  assert index.scheme == "collaborative"
  assert index.lookup(index.identifier(17)) == 17


def test_items_of_one_group_share_a_longer_prefix_than_items_apart():
  vectors, group = _clustered_vectors()
  codes = [str(c) for c in collaborative_indexing(vectors).codes]
  rng = np.random.default_rng(1)
  pairs = rng.integers(0, len(codes), size=(2000, 2))
  same = [
    _shared_prefix(codes[a], codes[b])
    for a, b in pairs
    if group[a] == group[b] and a != b
  ]
  apart = [
    _shared_prefix(codes[a], codes[b]) for a, b in pairs if group[a] != group[b]
  ]
  # Every group of 30 sits under one node two levels down, so its members
  # share at least the root "1" plus one digit; different groups mostly
  # part at the first digit.
  assert min(same) >= 2
  assert np.mean(same) > np.mean(apart) + 1


def test_leaves_hold_at_most_ten_items():
  vectors, _ = _clustered_vectors(groups=3, per_group=55)
  codes = [str(c) for c in collaborative_indexing(vectors).codes]
  parents = {}
  for code in codes:
    parents.setdefault(code[:-1], []).append(code[-1])
  assert max(len(v) for v in parents.values()) <= BRANCHES


def test_identical_vectors_still_get_distinct_codes():
  codes = collaborative_indexing(np.zeros((37, 4))).codes
  assert len(set(codes.tolist())) == 37


def test_make_index_needs_the_cf_vectors_and_names_the_schemes():
  split = load_split(get_config("ml-latest-small", "small").dataset)
  with pytest.raises(ValueError, match="item vectors"):
    make_index(split, "collaborative")
  with pytest.raises(ValueError, match="collaborative"):
    make_index(split, "semantic")
  vectors = np.random.default_rng(0).normal(size=(split.num_items, 4))
  index = make_index(split, "collaborative", 0, vectors)
  assert len(index.identifiers) == split.num_items


def _skewed_vectors(n=1349, dim=8, seed=0):
  """CF-like vectors: a dense core and a long, sparse tail."""
  rng = np.random.default_rng(seed)
  scale = np.where(rng.random(n) < 0.8, 0.1, 3.0)[:, None]
  return rng.normal(size=(n, dim)) * scale


@pytest.mark.parametrize("n", [360, 1000, 1349])
def test_balanced_tree_codes_are_as_short_as_the_catalogue_allows(n):
  vectors = _skewed_vectors(n)
  balanced = collaborative_indexing(vectors, seed=2, balanced=True).codes
  plain = collaborative_indexing(vectors, seed=2).codes
  digits = {len(str(c)) for c in balanced}
  # "1", then ceil(log10 n) digits of path and place in the leaf.
  assert digits == {1 + int(np.ceil(np.log10(n)))}
  assert len(set(balanced.tolist())) == n
  # Plain k-means on the skewed vectors grows a deeper branch.
  assert len(str(plain[0])) > len(str(balanced[0]))
  parents = {}
  for code in (str(c) for c in balanced):
    parents.setdefault(code[:-1], []).append(code)
  assert max(len(v) for v in parents.values()) <= BRANCHES


def test_balanced_tree_keeps_groups_that_fit_its_clusters():
  vectors, group = _clustered_vectors(groups=10, per_group=30)
  codes = [str(c) for c in collaborative_indexing(vectors, balanced=True).codes]
  # Ten groups of 30 into ten clusters of at most 30: one first digit each.
  first = {}
  for code, g in zip(codes, group):
    first.setdefault(g, set()).add(code[1])
  assert all(len(digits) == 1 for digits in first.values())
  assert len({d for digits in first.values() for d in digits}) == 10


def test_identical_vectors_get_distinct_balanced_codes():
  codes = collaborative_indexing(np.zeros((37, 4)), balanced=True).codes
  assert len(set(codes.tolist())) == 37


def test_pipeline_identifiers_are_trie_valid_and_fitted_on_training_data_only(
  tmp_path,
):
  """The run's identifiers, from its CF table: every one a distinct path of
  SmolLM2 tokens in the item trie, and the same whatever the held-out items
  are, while a change of training data changes them."""
  config = get_config("ml-latest-small", "small")
  config.dataset.indexing = "collaborative"
  split = load_split(config.dataset)

  def index_of(split, name):
    table = cf_table(config, tmp_path / name, split)
    return stage2.item_index(config, split, table)

  index = index_of(split, "as_loaded")
  tokenizer = load_gguf_tokenizer(smollm2_gguf_path())
  encoder = PromptEncoder(
    tokenizer,
    index,
    split.num_users,
    EntityCoding(config.qformer.num_queries),
    config.stage2.max_answer_tokens,
  )
  # build_item_trie refuses two items on one token path or one item's path
  # inside another's, so every identifier is a leaf the search can spell.
  trie = stage2.build_trie(encoder, tokenizer.vocab_size)
  for item in (0, 1, split.num_items // 2, split.num_items - 1):
    path = encoder.answer_tokens(index.identifier(item))
    assert len(path) < config.stage2.max_answer_tokens  # not cut short
    assert trie.item_of(path) == item

  rng = np.random.default_rng(0)
  other_heldout = dataclasses.replace(
    split,
    valid_items=rng.permutation(split.valid_items),
    test_items=rng.integers(0, split.num_items, split.num_users),
  )
  np.testing.assert_array_equal(
    index_of(other_heldout, "other_heldout").codes, index.codes
  )
  fewer_train = dataclasses.replace(
    split, train_sequences=[s[:-1] for s in split.train_sequences]
  )
  changed = index_of(fewer_train, "fewer_train").codes
  assert not np.array_equal(changed, index.codes)
