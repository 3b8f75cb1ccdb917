"""OpenP5 item indexing: the identifier string an LLM generates for an item.

Random indexing gives every item a distinct number from 1001 in a seeded random
order; sequential indexing numbers items from 1001 in order of first appearance
when walking users' sequences in order. We walk training sequences first and
only then the held-out items, so the numbering carries no information about a
user's validation or test item into anything that trains (OpenP5 walks the
full sequences). Sequential numbers still leak in another way: a user's next
item is often the number after their last one.

Collaborative indexing (OpenP5-C's idea, our construction): a hierarchical
k-means of the items' CF vectors, which ALS fitted on training interactions
only, with ten branches per level; an item's digits are its path down the
tree and its place in its leaf, so items close in CF space share identifier
prefixes and the LLM can generate coarse-to-fine.
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
    scheme: "random", "sequential" or "collaborative".
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


BRANCHES = 10  # children per tree node: one decimal digit per level


def _seeds(vectors: np.ndarray, k: int, rng) -> np.ndarray:
  """float[k, D] k-means++ starting centres drawn from float[N, D]."""
  n = len(vectors)
  centers = [vectors[rng.integers(n)]]
  for _ in range(1, k):
    d2 = np.min(
      ((vectors[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1
    )
    total = d2.sum()
    pick = rng.choice(n, p=d2 / total) if total > 0 else rng.integers(n)
    centers.append(vectors[pick])
  return np.asarray(centers)


def _kmeans(vectors: np.ndarray, k: int, rng, iterations: int = 20):
  """Labels int[N] of Lloyd's k-means (k-means++ seeding) on float[N, D]."""
  n = len(vectors)
  centers = _seeds(vectors, k, rng)
  labels = np.zeros(n, np.int64)
  for _ in range(iterations):
    d2 = ((vectors[:, None, :] - centers[None]) ** 2).sum(-1)
    labels = d2.argmin(1)
    _move_centers(vectors, labels, centers)
  return labels


def _move_centers(vectors, labels, centers) -> None:
  """Lloyd's update, in place: each centre to its members' mean (a centre
  without members stays)."""
  for c in range(len(centers)):
    members = vectors[labels == c]
    if len(members):
      centers[c] = members.mean(0)


def _balanced_kmeans(vectors: np.ndarray, k: int, rng, iterations: int = 20):
  """Labels int[N] of k-means whose clusters hold at most ceil(N / k) each.

  Lloyd's iterations with a capacity-bound assignment step: (point, centre)
  pairs are taken nearest first and a point joins the first centre that
  still has room. Equal sizes keep the tree, and so every identifier, as
  shallow as the catalogue allows (ceil(log10 N) digits of path), where
  plain k-means on skewed CF vectors grows deep branches that every other
  code is zero-padded to.
  """
  n = len(vectors)
  capacity = -(-n // k)
  centers = _seeds(vectors, k, rng)
  labels = np.zeros(n, np.int64)
  for _ in range(iterations):
    d2 = ((vectors[:, None, :] - centers[None]) ** 2).sum(-1)
    labels = np.full(n, -1, np.int64)
    room = np.full(k, capacity)
    placed = 0
    for flat in np.argsort(d2, axis=None, kind="stable"):
      point, center = divmod(int(flat), k)
      if labels[point] < 0 and room[center] > 0:
        labels[point] = center
        room[center] -= 1
        placed += 1
        if placed == n:  # the farther pairs can change nothing
          break
    _move_centers(vectors, labels, centers)
  return labels


def _paths(
  vectors: np.ndarray,
  items: np.ndarray,
  rng,
  prefix: str,
  out,
  balanced: bool = False,
):
  """Fills ``out[item] = (path digits, place in leaf)`` below ``prefix``."""
  if len(items) <= BRANCHES:
    for place, item in enumerate(items):
      out[int(item)] = (prefix, place)
    return
  cluster = _balanced_kmeans if balanced else _kmeans
  labels = cluster(vectors[items], BRANCHES, rng)
  if len(np.unique(labels)) == 1:
    # Identical vectors cannot be told apart by distance: split evenly.
    labels = np.arange(len(items)) * BRANCHES // len(items)
  for child in range(BRANCHES):
    members = items[labels == child]
    if len(members):
      _paths(vectors, members, rng, prefix + str(child), out, balanced)


def collaborative_indexing(
  item_vectors: np.ndarray, seed: int = 0, balanced: bool = False
) -> ItemIndex:
  """Codes whose digits follow a hierarchical k-means of the CF vectors.

  Args:
    item_vectors: float[I, D], each item's CF embedding (fitted on training
      interactions only, so the tree holds nothing of held-out items).
    seed: seeds the clustering.
    balanced: clusters of at most a tenth of their node each
      (``_balanced_kmeans``): codes of 1 + ceil(log10 I) digits, rather than
      as deep as plain k-means' deepest branch.

  Returns:
    An ItemIndex whose codes all have the same number of digits: ``1``, the
    item's path (one digit per level, zero-padded after a shallow leaf, whose
    node has no deeper children to collide with) and its place in the leaf.
  """
  vectors = np.asarray(item_vectors, np.float64)
  if vectors.ndim != 2 or not np.isfinite(vectors).all():
    raise ValueError("item_vectors must be a finite float[I, D] array")
  out: dict[int, tuple[str, int]] = {}
  _paths(
    vectors,
    np.arange(len(vectors)),
    np.random.default_rng(seed),
    "",
    out,
    balanced,
  )
  depth = max(len(path) for path, _ in out.values())
  codes = np.empty(len(vectors), np.int64)
  for item, (path, place) in out.items():
    codes[item] = int("1" + path.ljust(depth, "0") + str(place))
  return ItemIndex(codes, "collaborative")


SCHEMES = ("random", "sequential", "collaborative")


def make_index(
  split: LeaveOneOutSplit,
  scheme: str,
  seed: int = 0,
  item_vectors: np.ndarray | None = None,
  balanced: bool = False,
) -> ItemIndex:
  """The ItemIndex of ``scheme`` (``item_vectors``: the CF table's items,
  needed by "collaborative"; ``balanced``: its tree's clusters of equal
  size, ``collaborative_indexing``)."""
  if scheme == "random":
    return random_indexing(split.num_items, seed)
  if scheme == "sequential":
    return sequential_indexing(split)
  if scheme == "collaborative":
    if item_vectors is None or len(item_vectors) != split.num_items:
      raise ValueError(
        "collaborative indexing needs the CF table's item vectors "
        f"(float[{split.num_items}, d])"
      )
    return collaborative_indexing(item_vectors, seed, balanced)
  raise ValueError(f"indexing must be one of {SCHEMES}, got {scheme!r}")
