"""SASRec's training batches and evaluation histories, from a split.

Training reads only the split's training sequences (``s[:-2]`` of every
user): a user's row is the last ``max_len + 1`` items of that sequence,
shifted by one into inputs and next-item positives, right-aligned and padded
with ``PAD`` on the left, as in the original SASRec. Every positive has
``num_negatives`` items drawn uniformly from those outside the user's
training items. Batches are a pure function of (seed, step): users in a
fresh seeded order each epoch (``EpochStream``) and negatives from a
generator seeded by the step, so the stream's position is one integer and a
resumed run continues with exactly the batches it would have seen.
"""

from __future__ import annotations

import numpy as np

from ilm_jax.data.global_batches import GlobalBatches, HostShard
from ilm_jax.data.split import LeaveOneOutSplit
from ilm_jax.data.stage1 import EpochStream
from ilm_jax.models.sasrec import PAD

# Salts keep the user order and the negatives' draws independent streams.
_ORDER_SALT, _NEGATIVE_SALT = 11, 12
# Rejection rounds before the leftovers are resolved exactly (a user who has
# seen most of the catalogue would otherwise loop for long).
_REJECTION_ROUNDS = 8


def right_aligned(sequences: list[np.ndarray], length: int) -> np.ndarray:
  """int32[N, length]: each sequence's last ``length`` items, ``PAD`` before."""
  out = np.full((len(sequences), length), PAD, dtype=np.int32)
  for row, seq in enumerate(sequences):
    tail = np.asarray(seq, dtype=np.int32)[len(seq) - min(len(seq), length) :]
    if len(tail):
      out[row, length - len(tail) :] = tail
  return out


def training_rows(
  split: LeaveOneOutSplit, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """Every user's training inputs and next-item positives.

  Args:
    split: the leave-one-out split (only ``train_sequences`` is read).
    max_len: L.

  Returns:
    (int32[U, L] inputs, int32[U, L] positives): ``positives[u, t]`` is the
    item after ``inputs[u, t]`` in user u's training sequence; ``PAD`` where
    the sequence is shorter.
  """
  tails = [
    np.asarray(s, np.int32)[-(max_len + 1) :] for s in split.train_sequences
  ]
  return (
    right_aligned([t[:-1] for t in tails], max_len),
    right_aligned([t[1:] for t in tails], max_len),
  )


def evaluation_histories(
  split: LeaveOneOutSplit, split_name: str, max_len: int
) -> np.ndarray:
  """int32[U, L]: what SASRec reads to predict ``split_name``'s target.

  The training sequence for "valid"; training sequence plus the validation
  item for "test" (``LeaveOneOutSplit.history_all``), uncapped by the
  split's prompt ``max_history``.
  """
  return right_aligned(
    [split.history_all(u, split_name) for u in range(split.num_users)],
    max_len,
  )


def training_item_mask(split: LeaveOneOutSplit) -> np.ndarray:
  """bool[U, I]: True at the items of each user's training sequence."""
  users, items = split.train_interactions()
  mask = np.zeros((split.num_users, split.num_items), dtype=bool)
  mask[users, items] = True
  return mask


def sample_negatives(
  rng: np.random.Generator,
  users: np.ndarray,
  shape: tuple[int, ...],
  seen: np.ndarray,
) -> np.ndarray:
  """Items drawn uniformly from those each row's user has not trained on.

  Args:
    rng: the generator.
    users: int[B] user of each row.
    shape: (B, ...) of the draw.
    seen: bool[U, I] training items per user (``training_item_mask``).

  Returns:
    int32[shape] item indices, none in its user's training items.

  Raises:
    ValueError: a user has trained on every item.
  """
  num_items = seen.shape[1]
  if np.any(seen[users].all(axis=1)):
    raise ValueError("a user has every catalogue item in training")
  row_users = np.broadcast_to(
    users.reshape((-1,) + (1,) * (len(shape) - 1)), shape
  )
  out = rng.integers(0, num_items, size=shape)
  for _ in range(_REJECTION_ROUNDS):
    bad = seen[row_users, out]
    if not bad.any():
      return out.astype(np.int32)
    out[bad] = rng.integers(0, num_items, size=int(bad.sum()))
  # Whatever is still rejected: uniform over that user's unseen items.
  for index in zip(*np.nonzero(seen[row_users, out])):
    unseen = np.flatnonzero(~seen[row_users[index]])
    out[index] = unseen[rng.integers(len(unseen))]
  return out.astype(np.int32)


class SASRecBatches(GlobalBatches):
  """Checkpointable stream of SASRec training batches.

  Args:
    split: the leave-one-out split; only training sequences are read.
    batch_size: users per global batch.
    max_len: L.
    num_negatives: N sampled negatives per positive.
    seed: data-order and negative-sampling seed.
    shard: this host's share; default: this JAX process's.

  Yields:
    This host's rows (B = batch_size / hosts): ``inputs int32[B, L]``,
    ``positives int32[B, L]``, ``negatives int32[B, L, N]``, ``PAD`` where
    there is no positive.
  """

  def __init__(
    self,
    split: LeaveOneOutSplit,
    batch_size: int,
    max_len: int,
    num_negatives: int,
    seed: int,
    shard: HostShard | None = None,
  ):
    self.inputs, self.positives = training_rows(split, max_len)
    self.seen = training_item_mask(split)
    self.num_negatives = int(num_negatives)
    self.shard = shard or HostShard.of_this_process()
    self.seed = int(seed)
    self.order = EpochStream(split.num_users, batch_size, seed, _ORDER_SALT)
    super().__init__(self._batch)

  def _batch(self, step: int) -> dict[str, np.ndarray]:
    # Every host draws the whole global batch's negatives, so the stream
    # does not depend on the number of hosts; it keeps only its rows.
    users = self.order.batch(step)
    rng = np.random.default_rng((self.seed, _NEGATIVE_SALT, step))
    positives = self.positives[users]
    negatives = sample_negatives(
      rng, users, positives.shape + (self.num_negatives,), self.seen
    )
    negatives[positives == PAD] = PAD
    rows = self.shard.rows(len(users))
    return {
      "inputs": self.inputs[users][rows],
      "positives": positives[rows],
      "negatives": negatives[rows],
    }
