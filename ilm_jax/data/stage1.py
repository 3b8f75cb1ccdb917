"""Stage-1 examples, their record files and their global batch stream.

From a leave-one-out split (training interactions only):

* item-text pairs: every item with text, described by the split's catalog
  (latest-small: title with year, genres and tags rebuilt from training tags;
  ML-100K: title with year and genres; Beauty: its short text; Clothing: none);
* item-item pairs: items consumed consecutively in a training sequence;
* user-item pairs: a user with an item of their training history.

Held-out pairs for evaluation come from each user's validation item, which no
training pair contains: (last training item, validation item) for II and
(user, validation item) for UI, minus any pair that also occurs in training.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ilm_jax import files
from ilm_jax.data.global_batches import GlobalBatches, HostShard
from ilm_jax.data.records import RecordSource, write_records
from ilm_jax.data.split import LeaveOneOutSplit


@dataclasses.dataclass(frozen=True)
class Stage1Examples:
  """Everything stage 1 trains and evaluates on, as index arrays.

  Attributes:
    text_items: int32[Nt] items that have text.
    texts: str[Nt] their descriptions.
    ii_pairs: int32[Nii, 2] (item, next item) from training sequences.
    ui_pairs: int32[Nui, 2] (user, item) training interactions.
    heldout_ii: int32[Hii, 2] (last training item, validation item).
    heldout_ui: int32[Hui, 2] (user, validation item).
    heldout_ii_seen: Hii arrays int32[*]: the items of the user each
      held-out item-item pair comes from that filtered ranking leaves out
      (the user's training items other than the target).
    heldout_ui_seen: the same for each held-out user-item pair.
  """

  text_items: np.ndarray
  texts: np.ndarray
  ii_pairs: np.ndarray
  ui_pairs: np.ndarray
  heldout_ii: np.ndarray
  heldout_ui: np.ndarray
  heldout_ii_seen: tuple[np.ndarray, ...]
  heldout_ui_seen: tuple[np.ndarray, ...]

  @property
  def has_text(self) -> bool:
    return len(self.text_items) > 0


def _pairs(rows: list[tuple[int, int]]) -> np.ndarray:
  return np.array(rows, dtype=np.int32).reshape(-1, 2)


def build_stage1_examples(split: LeaveOneOutSplit) -> Stage1Examples:
  """Stage-1 pairs from a split's training part.

  Args:
    split: a leave-one-out split; its catalog's text is leak-free.

  Returns:
    The Stage1Examples.
  """
  catalog = split.catalog
  texts = [catalog.item_text(i) for i in range(split.num_items)]
  text_items = np.array([i for i, t in enumerate(texts) if t], np.int32)
  ii = []
  for seq in split.train_sequences:
    # A repeat consumption (a, a) carries no item-item signal.
    ii.extend((int(a), int(b)) for a, b in zip(seq[:-1], seq[1:]) if a != b)
  ii_pairs = _pairs(ii)
  users, items = split.train_interactions()
  ui_pairs = np.stack([users, items], axis=1).astype(np.int32)
  trained_ii = set(map(tuple, ii_pairs.tolist()))
  trained_ui = set(map(tuple, ui_pairs.tolist()))
  heldout_ii, heldout_ui = [], []
  ii_seen, ui_seen = [], []
  for u, seq in enumerate(split.train_sequences):
    valid = int(split.valid_items[u])
    # A repeat consumption's target stays rankable.
    seen = np.setdiff1d(np.asarray(seq, np.int32), [valid])
    if len(seq) and (int(seq[-1]), valid) not in trained_ii:
      if int(seq[-1]) != valid:
        heldout_ii.append((int(seq[-1]), valid))
        ii_seen.append(seen)
    if (u, valid) not in trained_ui:
      heldout_ui.append((u, valid))
      ui_seen.append(seen)
  return Stage1Examples(
    text_items=text_items,
    texts=np.array([texts[i] for i in text_items], dtype=object),
    ii_pairs=ii_pairs,
    ui_pairs=ui_pairs,
    heldout_ii=_pairs(heldout_ii),
    heldout_ui=_pairs(heldout_ui),
    heldout_ii_seen=tuple(ii_seen),
    heldout_ui_seen=tuple(ui_seen),
  )


class EpochStream:
  """Indices 0..n-1 in a fresh random order each epoch, read in batches.

  Batch ``step`` is a pure function of (seed, salt, step), which makes the
  stream's position a single integer.
  """

  def __init__(self, size: int, batch_size: int, seed: int, salt: int):
    if size < 1:
      raise ValueError("cannot draw batches from an empty example set")
    self.size, self.batch_size = size, batch_size
    self._seed = (seed, salt)
    self._perms: dict[int, np.ndarray] = {}

  def _perm(self, epoch: int) -> np.ndarray:
    if epoch not in self._perms:
      if len(self._perms) > 4:  # only the current epochs are needed
        self._perms.pop(min(self._perms))
      rng = np.random.default_rng((*self._seed, epoch))
      self._perms[epoch] = rng.permutation(self.size)
    return self._perms[epoch]

  def batch(self, step: int) -> np.ndarray:
    """int64[batch_size] indices of batch number ``step``."""
    flat = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
    epochs, offsets = np.divmod(flat, self.size)
    return np.array(
      [self._perm(int(e))[o] for e, o in zip(epochs, offsets)], np.int64
    )


RECORDS_DIR = "examples"
# Record files of the three parts, and each part's salt of the data order.
PART_FILES = {"text": "train_text", "ii": "train_ii", "ui": "train_ui"}
_SALTS = {"text": 0, "ii": 1, "ui": 2}


def write_stage1_records(
  directory,
  examples: Stage1Examples,
  token_ids: np.ndarray | None,
  text_mask: np.ndarray | None,
) -> None:
  """Writes the training parts as record files (reused when unchanged).

  Args:
    directory: where ``train_{text,ii,ui}`` files go.
    examples: from ``build_stage1_examples``.
    token_ids: int32[Nt, L] tokenised ``examples.texts`` (None: no text
      part).
    text_mask: int32[Nt, L].
  """
  directory = files.path(directory)
  if token_ids is not None:
    write_records(
      directory / PART_FILES["text"],
      (
        {"item": np.asarray(item, np.int32), "ids": ids, "mask": mask}
        for item, ids, mask in zip(examples.text_items, token_ids, text_mask)
      ),
    )
  for part, pairs in (("ii", examples.ii_pairs), ("ui", examples.ui_pairs)):
    write_records(directory / PART_FILES[part], ({"pair": p} for p in pairs))


class Stage1Batches(GlobalBatches):
  """Global stage-1 batches: item-text, item-item and user-item parts.

  Each enabled part has ``batch_size`` rows per global batch and its own
  epoch order (``EpochStream``); this host reads its share of the rows from
  the part's record file (``write_stage1_records``).

  Args:
    directory: where ``write_stage1_records`` wrote.
    batch_size: rows per part (the global batch).
    parts: which of "text", "ii", "ui" to emit.
    seed: data-order seed.
    shard: this host's share; default: this JAX process's.

  Yields:
    This host's rows (B = batch_size / hosts): ``text_item int32[B]``,
    ``text_ids int32[B, L]``, ``text_mask int32[B, L]``, ``ii_a int32[B]``,
    ``ii_b int32[B]``, ``ui_user int32[B]``, ``ui_item int32[B]`` (those of
    the enabled parts).
  """

  def __init__(
    self,
    directory,
    batch_size: int,
    parts: tuple[str, ...],
    seed: int,
    shard: HostShard | None = None,
  ):
    unknown = set(parts) - set(PART_FILES)
    if unknown:
      raise ValueError(f"unknown stage-1 batch parts {sorted(unknown)}")
    self.parts = tuple(parts)
    self.shard = shard or HostShard.of_this_process()
    directory = files.path(directory)
    self.sources = {}
    for part in self.parts:
      try:
        self.sources[part] = RecordSource(directory / PART_FILES[part])
      except FileNotFoundError:
        raise ValueError(f"stage-1 part {part!r} has no record file") from None
      if not len(self.sources[part]):
        raise ValueError(f"stage-1 part {part!r} has no training examples")
    self.streams = {
      part: EpochStream(len(self.sources[part]), batch_size, seed, _SALTS[part])
      for part in self.parts
    }
    super().__init__(self._batch)

  def _rows(self, part: str, step: int) -> list[dict]:
    positions = self.shard.take(self.streams[part].batch(step))
    return self.sources[part].read(positions)

  def _batch(self, step: int) -> dict[str, np.ndarray]:
    batch = {}
    if "text" in self.parts:
      rows = self._rows("text", step)
      batch["text_item"] = np.array([r["item"] for r in rows], np.int32)
      batch["text_ids"] = np.stack([r["ids"] for r in rows])
      batch["text_mask"] = np.stack([r["mask"] for r in rows])
    for part, names in (
      ("ii", ("ii_a", "ii_b")),
      ("ui", ("ui_user", "ui_item")),
    ):
      if part in self.parts:
        pairs = np.stack([r["pair"] for r in self._rows(part, step)])
        batch[names[0]], batch[names[1]] = pairs[:, 0], pairs[:, 1]
    return batch
