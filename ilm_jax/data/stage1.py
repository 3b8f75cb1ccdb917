"""Stage-1 examples and their checkpointable batch iterator.

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
  """

  text_items: np.ndarray
  texts: np.ndarray
  ii_pairs: np.ndarray
  ui_pairs: np.ndarray
  heldout_ii: np.ndarray
  heldout_ui: np.ndarray

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
  for u, seq in enumerate(split.train_sequences):
    valid = int(split.valid_items[u])
    if len(seq) and (int(seq[-1]), valid) not in trained_ii:
      if int(seq[-1]) != valid:
        heldout_ii.append((int(seq[-1]), valid))
    if (u, valid) not in trained_ui:
      heldout_ui.append((u, valid))
  return Stage1Examples(
    text_items=text_items,
    texts=np.array([texts[i] for i in text_items], dtype=object),
    ii_pairs=ii_pairs,
    ui_pairs=ui_pairs,
    heldout_ii=_pairs(heldout_ii),
    heldout_ui=_pairs(heldout_ui),
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


class Stage1Batches:
  """Global stage-1 batches: item-text, item-item and user-item parts.

  Each enabled part has ``batch_size`` rows and its own epoch order. Text
  is tokenised once up front (``token_ids``/``text_mask`` per text item).

  Args:
    examples: from ``build_stage1_examples``.
    token_ids: int32[Nt, L] tokenised ``examples.texts`` (None: no text part).
    text_mask: int32[Nt, L].
    batch_size: rows per part (the global batch).
    parts: which of "text", "ii", "ui" to emit.
    seed: data-order seed.
  """

  def __init__(
    self,
    examples: Stage1Examples,
    token_ids: np.ndarray | None,
    text_mask: np.ndarray | None,
    batch_size: int,
    parts: tuple[str, ...],
    seed: int,
  ):
    unknown = set(parts) - {"text", "ii", "ui"}
    if unknown:
      raise ValueError(f"unknown stage-1 batch parts {sorted(unknown)}")
    self.examples = examples
    self.token_ids, self.text_mask = token_ids, text_mask
    self.parts = tuple(parts)
    self.step = 0
    sizes = {
      "text": len(examples.text_items),
      "ii": len(examples.ii_pairs),
      "ui": len(examples.ui_pairs),
    }
    for part in self.parts:
      if sizes[part] == 0:
        raise ValueError(f"stage-1 part {part!r} has no training examples")
    if "text" in self.parts and token_ids is None:
      raise ValueError("the text part needs token_ids and text_mask")
    self._streams = {
      part: EpochStream(sizes[part], batch_size, seed, salt)
      for salt, part in enumerate(("text", "ii", "ui"))
      if part in self.parts
    }

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = {}
    ex = self.examples
    if "text" in self.parts:
      idx = self._streams["text"].batch(self.step)
      batch["text_item"] = ex.text_items[idx]
      batch["text_ids"] = self.token_ids[idx]
      batch["text_mask"] = self.text_mask[idx]
    if "ii" in self.parts:
      pairs = ex.ii_pairs[self._streams["ii"].batch(self.step)]
      batch["ii_a"], batch["ii_b"] = pairs[:, 0], pairs[:, 1]
    if "ui" in self.parts:
      pairs = ex.ui_pairs[self._streams["ui"].batch(self.step)]
      batch["ui_user"], batch["ui_item"] = pairs[:, 0], pairs[:, 1]
    self.step += 1
    return batch

  def get_state(self) -> dict:
    return {"step": self.step}

  def set_state(self, state: dict) -> None:
    self.step = int(state["step"])
