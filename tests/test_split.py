"""The OpenP5 leave-one-out protocol and item indexing; no leakage."""

import types

import numpy as np
import pytest

from ilm_jax.data import leave_one_out, load_dataset, load_split
from ilm_jax.data.dataset import from_events
from ilm_jax.data.indexing import FIRST_ID, make_index


@pytest.fixture(scope="module")
def latest_small():
  return load_dataset(types.SimpleNamespace(name="ml-latest-small"))


def test_split_follows_openp5(latest_small):
  split = leave_one_out(latest_small)
  for u in (0, 17, 609):
    seq = latest_small.sequences[u]
    np.testing.assert_array_equal(split.train_sequences[u], seq[:-2])
    assert split.valid_items[u] == seq[-2]
    assert split.test_items[u] == seq[-1]
    np.testing.assert_array_equal(split.history(u, "valid"), seq[:-2][-20:])
    np.testing.assert_array_equal(split.history(u, "test"), seq[:-1][-20:])


def test_training_data_never_contains_held_out_positions(latest_small):
  split = leave_one_out(latest_small)
  users, items = split.train_interactions()
  assert len(items) == latest_small.num_interactions - 2 * split.num_users
  per_user = np.bincount(users, minlength=split.num_users)
  full = np.array([len(s) for s in latest_small.sequences])
  np.testing.assert_array_equal(per_user, full - 2)
  ex_users, histories, targets = split.sequential_examples()
  for n in range(0, len(ex_users), 997):
    u = ex_users[n]
    train = split.train_sequences[u]
    # every target and history item is a training position of that user
    assert targets[n] in train
    hist = histories[n][histories[n] >= 0]
    assert len(hist) <= 20
    assert np.isin(hist, train).all()
  # examples cover exactly the training targets s[1:]
  assert len(targets) == sum(max(0, len(s) - 1) for s in split.train_sequences)


def test_tags_on_held_out_items_are_dropped():
  users = np.array([1, 1, 1, 1, 2, 2, 2, 2])
  items = np.array([10, 11, 12, 13, 10, 11, 12, 13])
  data = from_events(
    "toy",
    users,
    items,
    np.arange(8),
    item_catalog_ids=np.array([10, 11, 12, 13]),
    item_fields={"title": np.array(["a", "b", "c", "d"])},
  )
  from ilm_jax.data.movielens import attach_tags

  data = attach_tags(
    data, ["1", "1", "2"], ["13", "11", "11"], ["secret", "kept", "kept2"]
  )
  split = leave_one_out(data)
  tags = split.catalog.item_fields["tags"]
  assert tags[3] == ""  # user 1's test item 13: their tag must not leak
  assert set(tags[1].split(", ")) == {"kept", "kept2"}


def test_short_sequences_are_rejected_by_name():
  data = from_events("toy", np.array([5, 5]), np.array([1, 2]), np.arange(2))
  with pytest.raises(ValueError, match="user '5' has 2 interactions"):
    leave_one_out(data)


def test_item_indexing_is_a_deterministic_bijection(latest_small):
  split = leave_one_out(latest_small)
  for scheme in ("random", "sequential"):
    index = make_index(split, scheme, seed=3)
    assert sorted(index.codes) == list(
      range(FIRST_ID, FIRST_ID + split.num_items)
    )
    again = make_index(split, scheme, seed=3)
    np.testing.assert_array_equal(index.codes, again.codes)
    item = 123
    assert index.lookup(index.identifier(item)) == item
  seq = make_index(split, "sequential")
  assert seq.codes[split.train_sequences[0][0]] == FIRST_ID
  with pytest.raises(KeyError, match="item_99"):
    seq.lookup("item_99")


def test_sequential_indexing_ignores_held_out_order():
  # Changing only held-out items must not change training items' ids.
  seqs_a = [[0, 1, 2, 3], [1, 0, 3, 2]]
  seqs_b = [[0, 1, 3, 2], [1, 0, 2, 3]]

  def index_of(seqs):
    users = np.repeat([0, 1], 4)
    data = from_events("toy", users, np.concatenate(seqs), np.arange(8))
    return make_index(leave_one_out(data), "sequential").codes

  a, b = index_of(seqs_a), index_of(seqs_b)
  np.testing.assert_array_equal(a[[0, 1]], b[[0, 1]])


def test_load_split_max_users_keeps_consistent_indices():
  cfg = types.SimpleNamespace(name="ml-latest-small", max_users=50)
  split = load_split(cfg)
  assert split.num_users == 50
  users, items = split.train_interactions()
  assert items.max() < split.num_items
  assert split.test_items.max() < split.num_items
