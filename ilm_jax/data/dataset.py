"""The one in-memory representation of a recommendation dataset.

Items and users are numbered densely from 0 (``item index``, ``user index``);
their original identifiers are kept so nothing is lost on the way to the
model. Interactions are chronological per-user sequences of item indices, the
form every downstream stage (splits, ALS, stage-1 pairs, stage-2 prompts)
reads.
"""

from __future__ import annotations

import dataclasses

import numpy as np


class DataFormatError(ValueError):
  """A data file is malformed; the message names the file and line."""

  def __init__(self, path, line_no: int | None, message: str):
    where = f"{path}:{line_no}" if line_no is not None else f"{path}"
    super().__init__(f"{where}: {message}")
    self.path = str(path)
    self.line_no = line_no


@dataclasses.dataclass(frozen=True)
class Catalog:
  """Items and users with their raw ids and whatever text the source has.

  Attributes:
    item_ids: str[I], the source's item identifiers; position = item index.
    user_ids: str[U], the source's user identifiers; position = user index.
    item_fields: field name -> str[I] ("title", "genres", "tags", "text"...),
      empty strings where an item has no value. Empty dict: items have no text.
  """

  item_ids: np.ndarray
  user_ids: np.ndarray
  item_fields: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def has_text(self) -> bool:
    return any(np.any(v != "") for v in self.item_fields.values())

  def item_text(self, item: int) -> str:
    """One line describing an item from all its text fields ('' if none)."""
    parts = []
    for name, values in self.item_fields.items():
      value = values[item]
      if value:
        parts.append(value if name in ("title", "text") else f"{name}: {value}")
    return "; ".join(parts)

  def subset(self, item_keep: np.ndarray, user_keep: np.ndarray) -> Catalog:
    """A catalog restricted to the given item and user indices (in order)."""
    return Catalog(
      item_ids=self.item_ids[item_keep],
      user_ids=self.user_ids[user_keep],
      item_fields={k: v[item_keep] for k, v in self.item_fields.items()},
    )


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A catalog plus each user's chronological item sequence.

  Attributes:
    name: dataset name, e.g. "ml-latest-small".
    catalog: items and users.
    sequences: one int32[L_u] array of item indices per user (user index =
      list position), oldest first.
    tag_events: optional (int32[N] user index, int32[N] item index, str[N]
      tag) for sources with user-given tags; splits use them to rebuild the
      "tags" text without tags users gave to their own held-out items.
  """

  name: str
  catalog: Catalog
  sequences: list[np.ndarray]
  tag_events: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

  def __post_init__(self):
    if len(self.sequences) != self.catalog.num_users:
      raise ValueError(
        f"{self.name}: {len(self.sequences)} sequences for "
        f"{self.catalog.num_users} users"
      )

  @property
  def num_interactions(self) -> int:
    return int(sum(len(s) for s in self.sequences))

  def first_users(self, n: int) -> Dataset:
    """The first n users and only the items they consumed (for CPU runs)."""
    if n < 0 or n >= self.catalog.num_users:
      return self
    seqs = self.sequences[:n]
    items = np.unique(np.concatenate(seqs))
    new_item = np.full(self.catalog.num_items, -1, dtype=np.int32)
    new_item[items] = np.arange(len(items), dtype=np.int32)
    tags = None
    if self.tag_events is not None:
      tu, ti, tt = self.tag_events
      ok = (tu < n) & (new_item[ti] >= 0)
      tags = (tu[ok], new_item[ti[ok]], tt[ok])
    catalog = self.catalog.subset(items, np.arange(n))
    return Dataset(
      self.name, catalog, [new_item[s] for s in seqs], tag_events=tags
    )

  def stats(self) -> dict[str, int]:
    return {
      "users": self.catalog.num_users,
      "items": self.catalog.num_items,
      "interactions": self.num_interactions,
    }


def from_events(
  name: str,
  user_raw: np.ndarray,
  item_raw: np.ndarray,
  order_key: np.ndarray,
  item_catalog_ids: np.ndarray | None = None,
  item_fields: dict[str, np.ndarray] | None = None,
) -> Dataset:
  """Builds a Dataset from flat (user, item, time) events.

  Events are sorted per user by ``order_key`` (a stable sort, so ties keep file
  order). Repeat consumptions are kept: they are real behaviour.

  Args:
    name: dataset name.
    user_raw: N raw user ids (strings or integers; a list or an array).
    item_raw: N raw item ids, likewise.
    order_key: int or float[N], the chronological key (timestamp, or the file
      position when the source has no time).
    item_catalog_ids: raw ids of the items ``item_fields`` describe; items that
      appear in events but not here get empty text.
    item_fields: field -> str[len(item_catalog_ids)].

  Returns:
    A Dataset whose items are those that occur in the events, numbered in
    ascending raw-id order, and users likewise.
  """
  users, user_idx = _dense_ids(user_raw)
  items, item_idx = _dense_ids(item_raw)
  order = np.lexsort((np.asarray(order_key), user_idx))
  user_sorted = user_idx[order]
  item_sorted = item_idx[order].astype(np.int32)
  bounds = np.searchsorted(user_sorted, np.arange(len(users) + 1))
  sequences = [
    item_sorted[bounds[u] : bounds[u + 1]] for u in range(len(users))
  ]
  fields = {}
  if item_fields:
    lookup = {str(k): i for i, k in enumerate(item_catalog_ids)}
    rows = np.array([lookup.get(i, -1) for i in items], dtype=np.int64)
    for field_name, values in item_fields.items():
      values = np.asarray(values, dtype=object)
      if not len(values):  # a catalog without items describes none
        values = np.array([""], dtype=object)
      column = np.where(rows >= 0, values[np.maximum(rows, 0)], "")
      fields[field_name] = column.astype(str)
  return Dataset(name, Catalog(items, users, fields), sequences)


def _dense_ids(raw) -> tuple[np.ndarray, np.ndarray]:
  """Unique raw ids (numeric order when all are integers) and dense indices.

  Ids are counted through a dict rather than a numpy string array of all N
  events, whose width would be set by the longest id; integers of any size
  sort exactly since they are compared as Python ints.

  Returns:
    (str[U] unique ids in order, int64[N] index of each event's id).
  """
  codes: dict[str, int] = {}
  first = np.fromiter(
    (codes.setdefault(str(r), len(codes)) for r in raw),
    dtype=np.int64,
    count=len(raw),
  )
  uniq = list(codes)
  if all(u.isascii() and u.isdigit() for u in uniq):
    order = sorted(range(len(uniq)), key=lambda i: (int(uniq[i]), uniq[i]))
  else:
    order = sorted(range(len(uniq)), key=uniq.__getitem__)
  rank = np.empty(len(uniq), dtype=np.int64)
  rank[order] = np.arange(len(uniq))
  ids = np.array([uniq[i] for i in order], dtype=str)
  return ids, rank[first]
