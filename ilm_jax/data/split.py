"""OpenP5's leave-one-out protocol.

Per user with chronological items ``s``: training uses prefixes of
``s[:-2]``, validation predicts ``s[-2]`` from ``s[:-2]`` and test predicts
``s[-1]`` from ``s[:-1]``; every history is capped at the last 20 items.
Only ``train_sequences`` (and what is derived from them) may reach anything
that trains: ALS, stage-1 pairs, stage-2 prompts, item text built from tags.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ilm_jax.data import dataset as ds
from ilm_jax.data.movielens import aggregate_tags

MAX_HISTORY = 20
MIN_SEQUENCE = 3  # one training item, one validation item, one test item


@dataclasses.dataclass(frozen=True)
class LeaveOneOutSplit:
  """A leave-one-out split.

  Attributes:
    name: dataset name.
    catalog: the catalog, with tag text rebuilt from training pairs only.
    train_sequences: int32[L_u - 2] per user.
    valid_items: int32[U], each user's second-to-last item.
    test_items: int32[U], each user's last item.
    max_history: history cap for prompts.
  """

  name: str
  catalog: ds.Catalog
  train_sequences: list[np.ndarray]
  valid_items: np.ndarray
  test_items: np.ndarray
  max_history: int = MAX_HISTORY

  @property
  def num_users(self) -> int:
    return len(self.train_sequences)

  @property
  def num_items(self) -> int:
    return self.catalog.num_items

  def train_interactions(self) -> tuple[np.ndarray, np.ndarray]:
    """(int32[N] users, int32[N] items) of every training interaction."""
    lengths = [len(s) for s in self.train_sequences]
    users = np.repeat(np.arange(self.num_users, dtype=np.int32), lengths)
    return users, np.concatenate(self.train_sequences).astype(np.int32)

  def history(self, user: int, split: str) -> np.ndarray:
    """int32[<= max_history] items a model may see when predicting ``split``.

    Args:
      user: user index.
      split: "valid" (history = training items) or "test" (training items plus
        the validation item, as in OpenP5).
    """
    seq = self.train_sequences[user]
    if split == "test":
      seq = np.append(seq, self.valid_items[user]).astype(np.int32)
    elif split != "valid":
      raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    return seq[-self.max_history :]

  def targets(self, split: str) -> np.ndarray:
    if split == "valid":
      return self.valid_items
    if split == "test":
      return self.test_items
    raise ValueError(f"split must be 'valid' or 'test', got {split!r}")

  def seen_items(self, split: str) -> list[np.ndarray]:
    """Items to exclude in filtered ranking: what the user had before."""
    return [self.history_all(u, split) for u in range(self.num_users)]

  def history_all(self, user: int, split: str) -> np.ndarray:
    seq = self.train_sequences[user]
    if split == "test":
      return np.append(seq, self.valid_items[user]).astype(np.int32)
    return seq

  def sequential_examples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Next-item training examples from every prefix of the train sequences.

    Returns:
      (int32[N] user, int32[N, max_history] history right-aligned and padded
      with -1, int32[N] target item), for targets ``s[1:]`` of each training
      sequence ``s``.
    """
    users, histories, targets = [], [], []
    for u, seq in enumerate(self.train_sequences):
      for t in range(1, len(seq)):
        h = seq[max(0, t - self.max_history) : t]
        row = np.full(self.max_history, -1, dtype=np.int32)
        row[self.max_history - len(h) :] = h
        users.append(u)
        histories.append(row)
        targets.append(seq[t])
    return (
      np.array(users, dtype=np.int32),
      np.array(histories, dtype=np.int32).reshape(-1, self.max_history),
      np.array(targets, dtype=np.int32),
    )


def leave_one_out(
  data: ds.Dataset, max_history: int = MAX_HISTORY
) -> LeaveOneOutSplit:
  """Splits every user's sequence as OpenP5 does.

  Raises:
    ValueError: naming the first user whose sequence is too short (fewer than
      3 items), since such a user would have no training data.
  """
  for u, seq in enumerate(data.sequences):
    if len(seq) < MIN_SEQUENCE:
      raise ValueError(
        f"{data.name}: user {str(data.catalog.user_ids[u])!r} has {len(seq)} "
        f"interactions; leave-one-out needs at least {MIN_SEQUENCE} "
        "(apply k-core filtering with k >= 3)"
      )
  train = [np.asarray(s[:-2], dtype=np.int32) for s in data.sequences]
  valid = np.array([s[-2] for s in data.sequences], dtype=np.int32)
  test = np.array([s[-1] for s in data.sequences], dtype=np.int32)
  catalog = data.catalog
  if data.tag_events is not None:
    tu, ti, tt = data.tag_events
    # A tag a user put on their own held-out item would leak that item.
    keep = (ti != valid[tu]) & (ti != test[tu])
    fields = dict(catalog.item_fields)
    fields["tags"] = aggregate_tags(catalog.num_items, tu, ti, tt, keep)
    catalog = ds.Catalog(catalog.item_ids, catalog.user_ids, fields)
  return LeaveOneOutSplit(data.name, catalog, train, valid, test, max_history)
