"""The CF table: one float32 row per entity, users first, then items.

A user is a "special item": downstream code (Q-Former inputs, scorers) indexes
one table with an *entity* index, ``user`` for users and ``num_users + item``
for items, and tells the two apart by ``entity_type``.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from ilm_jax import distributed, files

ITEM_TYPE = 0
USER_TYPE = 1
TABLE_FILE = "cf_table.npy"
META_FILE = "cf_meta.json"


@dataclasses.dataclass(frozen=True)
class CFTable:
  """CF embeddings of users and items in one space.

  Attributes:
    embeddings: float32[num_users + num_items, d]; rows [0, num_users) are
      users, rows [num_users, num_users + num_items) are items.
    num_users: U.
    num_items: I.
  """

  embeddings: np.ndarray
  num_users: int
  num_items: int

  def __post_init__(self):
    rows, _ = self.embeddings.shape
    if rows != self.num_users + self.num_items:
      raise ValueError(
        f"CF table has {rows} rows, expected {self.num_users} users + "
        f"{self.num_items} items"
      )

  @property
  def dim(self) -> int:
    return int(self.embeddings.shape[1])

  @property
  def users(self) -> np.ndarray:
    """float32[U, d]."""
    return self.embeddings[: self.num_users]

  @property
  def items(self) -> np.ndarray:
    """float32[I, d]."""
    return self.embeddings[self.num_users :]

  def item_entity(self, items):
    """Entity index of item indices."""
    return np.asarray(items) + self.num_users

  def user_entity(self, users):
    """Entity index of user indices."""
    return np.asarray(users)

  def entity_type(self, entities) -> np.ndarray:
    """int32 ITEM_TYPE / USER_TYPE per entity index."""
    entities = np.asarray(entities)
    return np.where(entities < self.num_users, USER_TYPE, ITEM_TYPE).astype(
      np.int32
    )

  def save(self, directory: str | pathlib.Path, config: dict | None = None):
    """Writes the table, then its metadata (incl. the config that made it).

    Table and metadata are one unit: the metadata is written last and holds
    the table file's SHA-256, so a run killed between the two writes leaves
    a new table beside old metadata whose hash does not match it, which
    ``load_cf_table`` rejects (and the cf stage refits) instead of pairing
    them.
    """
    directory = files.path(directory)
    table_path = directory / TABLE_FILE
    # In a multi-host job every process holds the table; process 0 writes
    # it and the others wait, since later stages read (and hash) the file.
    if distributed.is_primary():
      files.save_npy(table_path, np.asarray(self.embeddings, np.float32))
      meta = {
        "num_users": self.num_users,
        "num_items": self.num_items,
        "dim": self.dim,
        "table_sha256": files.sha256(table_path),
        "config": config or {},
      }
      files.write_json(directory / META_FILE, meta)
    distributed.barrier("cf table written")


class DamagedTableError(ValueError):
  """The table or its metadata is missing, unreadable or does not match."""


def load_cf_table(directory: str | pathlib.Path) -> CFTable:
  """Reads a table written by ``CFTable.save``; errors name the file.

  Raises:
    FileNotFoundError: the table or its metadata is missing.
    DamagedTableError: either file is damaged, or the table is not the one
      its metadata was written for (a write interrupted between the two).
  """
  directory = files.path(directory)
  meta_path = directory / META_FILE
  table_path = directory / TABLE_FILE
  for p in (meta_path, table_path):
    if not p.exists():
      raise FileNotFoundError(f"{p}: no CF table here (run the 'cf' stage)")
  way_out = "delete it or rerun the 'cf' stage to refit the table"
  try:
    meta = files.read_json(meta_path, way_out)
    expected = meta["table_sha256"]
    users, items = int(meta["num_users"]), int(meta["num_items"])
  except (ValueError, KeyError, TypeError) as e:
    raise DamagedTableError(
      f"{meta_path}: damaged or incomplete CF metadata ({e}); {way_out}"
    ) from e
  if files.sha256(table_path) != expected:
    raise DamagedTableError(
      f"{table_path}: does not match the SHA-256 in {meta_path} (damaged, "
      f"or written by an interrupted run); {way_out}"
    )
  try:
    with table_path.open("rb") as f:
      emb = np.load(f)
  except (ValueError, OSError, EOFError) as e:
    raise DamagedTableError(f"{table_path}: unreadable ({e}); {way_out}") from e
  if emb.ndim != 2 or not np.isfinite(emb).all():
    raise DamagedTableError(
      f"{table_path}: CF table must be a finite 2-D array; {way_out}"
    )
  return CFTable(emb, users, items)
