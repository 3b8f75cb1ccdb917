"""OpenP5 item indexing: the identifier string an LLM generates for an item.

Random indexing gives every item a distinct number from 1001 in a seeded random
order; sequential indexing numbers items from 1001 in order of first appearance
when walking users' sequences in order. We walk training sequences first and
only then the held-out items, so the numbering carries no information about a
user's validation or test item into anything that trains (OpenP5 walks the
full sequences).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ilm_jax.data.split import LeaveOneOutSplit

FIRST_ID = 1001
PREFIX = "item_"


@dataclasses.dataclass(frozen=True)
class ItemIndex:
  """Bijection between item indices and identifier numbers.

  Attributes:
    codes: int64[I], the identifier number of each item index.
    scheme: "random" or "sequential".
  """

  codes: np.ndarray
  scheme: str

  def __post_init__(self):
    if len(np.unique(self.codes)) != len(self.codes):
      raise ValueError("item identifier codes must be distinct")

  @property
  def identifiers(self) -> list[str]:
    """The identifier string of every item, e.g. ``item_1234``."""
    return [f"{PREFIX}{c}" for c in self.codes]

  def identifier(self, item: int) -> str:
    return f"{PREFIX}{self.codes[item]}"

  def lookup(self, identifier: str) -> int:
    """Item index of an identifier string; KeyError names unknown ones."""
    table = self._table()
    try:
      return table[identifier]
    except KeyError:
      raise KeyError(f"unknown item identifier {identifier!r}") from None

  def _table(self) -> dict[str, int]:
    cache = self.__dict__.get("_cache")
    if cache is None:
      cache = {s: i for i, s in enumerate(self.identifiers)}
      object.__setattr__(self, "_cache", cache)
    return cache


def random_indexing(num_items: int, seed: int = 0) -> ItemIndex:
  """Codes FIRST_ID.. assigned to items in a seeded random order."""
  perm = np.random.default_rng(seed).permutation(num_items)
  codes = np.empty(num_items, dtype=np.int64)
  codes[perm] = FIRST_ID + np.arange(num_items)
  return ItemIndex(codes, "random")


def sequential_indexing(split: LeaveOneOutSplit) -> ItemIndex:
  """Codes FIRST_ID.. in order of first appearance in training sequences."""
  order: dict[int, None] = {}
  for seq in split.train_sequences:
    order.update(dict.fromkeys(int(i) for i in seq))
  for held_out in (split.valid_items, split.test_items):
    order.update(dict.fromkeys(int(i) for i in held_out))
  order.update(dict.fromkeys(range(split.num_items)))  # items never consumed
  codes = np.empty(split.num_items, dtype=np.int64)
  codes[list(order)] = FIRST_ID + np.arange(split.num_items)
  return ItemIndex(codes, "sequential")


def make_index(
  split: LeaveOneOutSplit, scheme: str, seed: int = 0
) -> ItemIndex:
  if scheme == "random":
    return random_indexing(split.num_items, seed)
  if scheme == "sequential":
    return sequential_indexing(split)
  raise ValueError(f"indexing must be 'random' or 'sequential', got {scheme!r}")
