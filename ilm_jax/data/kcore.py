"""Iterative k-core filtering of users and items."""

from __future__ import annotations

import numpy as np

from ilm_jax.data import dataset as ds


def kcore(data: ds.Dataset, k: int) -> ds.Dataset:
  """Keeps the largest sub-dataset where every user and item has >= k events.

  Removing sparse users can make items sparse and vice versa, so the filter
  repeats until nothing changes. Indices are renumbered densely in the old
  order; tag events follow their users and items.

  Args:
    data: the dataset.
    k: minimum interactions per user and per item (k <= 1 is a no-op).

  Returns:
    The filtered Dataset.

  Raises:
    ValueError: when nothing survives the filter.
  """
  if k <= 1:
    return data
  seqs = [np.asarray(s) for s in data.sequences]
  user_ok = np.ones(len(seqs), dtype=bool)
  item_ok = np.ones(data.catalog.num_items, dtype=bool)
  while True:
    kept = [s[item_ok[s]] if u else s[:0] for s, u in zip(seqs, user_ok)]
    user_counts = np.array([len(s) for s in kept])
    flat = np.concatenate(kept) if kept else np.zeros(0, np.int32)
    item_counts = np.bincount(flat, minlength=len(item_ok))
    new_user_ok = user_ok & (user_counts >= k)
    new_item_ok = item_ok & (item_counts >= k)
    if np.array_equal(new_user_ok, user_ok) and np.array_equal(
      new_item_ok, item_ok
    ):
      break
    user_ok, item_ok = new_user_ok, new_item_ok
  if not user_ok.any():
    raise ValueError(f"{data.name}: no user survives {k}-core filtering")
  item_keep = np.flatnonzero(item_ok)
  user_keep = np.flatnonzero(user_ok)
  new_item = np.full(len(item_ok), -1, dtype=np.int32)
  new_item[item_keep] = np.arange(len(item_keep), dtype=np.int32)
  new_user = np.full(len(user_ok), -1, dtype=np.int32)
  new_user[user_keep] = np.arange(len(user_keep), dtype=np.int32)
  sequences = [new_item[kept[u]] for u in user_keep]
  tag_events = None
  if data.tag_events is not None:
    tu, ti, tt = data.tag_events
    ok = user_ok[tu] & item_ok[ti]
    tag_events = (new_user[tu[ok]], new_item[ti[ok]], tt[ok])
  catalog = data.catalog.subset(item_keep, user_keep)
  return ds.Dataset(data.name, catalog, sequences, tag_events=tag_events)
