"""Named datasets and where their files live.

``load_dataset(config)`` is the single entry point: config fields ``name``,
``path`` (a file or directory; empty = the default location), ``kcore`` and
``min_rating``. The default for every dataset except the embedded
MovieLens latest-small is ``../shared/data`` beside the repository, or the
directory in the ``ILM_DATA_ROOT`` environment variable.

A user's own data needs no code: ``interactions`` reads a CSV/TSV of
(user, item[, timestamp][, rating]) rows and ``openp5`` an OpenP5-format
``user_sequence.txt``, both from ``path``, with item text from the optional
``item_text`` CSV/TSV (``ilm_jax.data.interactions``).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from ilm_jax.data import dataset as ds
from ilm_jax.data import interactions, movielens, openp5
from ilm_jax.data.kcore import kcore
from ilm_jax.data.split import LeaveOneOutSplit, leave_one_out

ASSETS = pathlib.Path(__file__).resolve().parent / "assets"
EMBEDDED_LATEST_SMALL = ASSETS / "ml-latest-small.zip"


def data_root() -> pathlib.Path:
  """Where user-supplied datasets live by default."""
  env = os.environ.get("ILM_DATA_ROOT")
  if env:
    return pathlib.Path(env)
  repo = pathlib.Path(__file__).resolve().parents[2]
  return repo.parent / "shared" / "data"


def _latest_small(path, min_rating):
  return movielens.load_latest_small(path or EMBEDDED_LATEST_SMALL, min_rating)


def _ml100k(path, min_rating):
  return movielens.load_ml100k(path or data_root() / "ml-100k", min_rating)


def _ml1m(path, min_rating):
  return movielens.load_ml1m(path or data_root() / "ml-1m", min_rating)


def _openp5_ml100k(path, min_rating):
  del min_rating  # OpenP5 files carry no ratings
  root = pathlib.Path(path) if path else data_root()
  return openp5.load_openp5_ml100k(root / "openp5", root / "ml-100k")


def _openp5_beauty(path, min_rating):
  del min_rating
  root = pathlib.Path(path) if path else data_root()
  return openp5.load_openp5_beauty(root / "openp5", root / "beauty-text")


def _openp5_clothing(path, min_rating):
  del min_rating
  root = pathlib.Path(path) if path else data_root()
  return openp5.load_openp5_clothing(root / "openp5")


def _user_file(path, name: str, example: str) -> pathlib.Path:
  """The file a user-data dataset reads; it has no default location."""
  if path is None:
    raise ValueError(
      f"dataset {name!r} reads the user's own file: set dataset.path "
      f"(e.g. --config.dataset.path={example})"
    )
  return pathlib.Path(path)


def _interactions(path, min_rating, item_text=None):
  path = _user_file(path, "interactions", "/data/ratings.csv")
  return interactions.load_interactions(path, min_rating, item_text)


def _openp5_file(path, min_rating, item_text=None):
  del min_rating  # OpenP5 files carry no ratings
  path = _user_file(path, "openp5", "/data/user_sequence.txt")
  return openp5.load_openp5_file(path, item_text)


# name -> (loader(path or None, min_rating), default k-core)
DATASETS: dict[str, tuple[Callable[..., ds.Dataset], int]] = {
  "ml-latest-small": (_latest_small, 5),
  "ml-100k": (_ml100k, 5),
  "ml-1m": (_ml1m, 5),
  # OpenP5 files are already 5-core; filtering again changes nothing.
  "openp5-ml100k": (_openp5_ml100k, 5),
  "openp5-beauty": (_openp5_beauty, 5),
  "openp5-clothing": (_openp5_clothing, 5),
  # A user's own files (loader(path, min_rating, item_text path or None)).
  "interactions": (_interactions, 5),
  "openp5": (_openp5_file, 5),
}
# Datasets whose text comes from ``item_text`` rather than the source.
USER_FILE_DATASETS = ("interactions", "openp5")


def load_dataset(config) -> ds.Dataset:
  """Loads and k-core filters the dataset a config names.

  Args:
    config: anything with ``name`` and optional ``path``, ``kcore`` (-1 = the
      dataset's default), ``min_rating`` and ``item_text`` (an item-text
      file for the user-file datasets; "" = none).
  """
  name = config.name
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
  loader, default_k = DATASETS[name]
  path = getattr(config, "path", "") or None
  min_rating = getattr(config, "min_rating", 0.0)
  k = getattr(config, "kcore", -1)
  item_text = getattr(config, "item_text", "") or ""
  path = pathlib.Path(path) if path else None
  if name in USER_FILE_DATASETS:
    text_path = pathlib.Path(item_text) if item_text else None
    data = loader(path, min_rating, text_path)
  elif item_text:
    # Named datasets join their own text; silently ignoring a file the user
    # named would hide the mistake.
    raise ValueError(
      f"dataset.item_text is read only by {list(USER_FILE_DATASETS)}; "
      f"{name!r} brings its own item text"
    )
  else:
    data = loader(path, min_rating)
  k = default_k if k is None or k < 0 else k
  try:
    return kcore(data, k)
  except ValueError as e:
    if name not in USER_FILE_DATASETS:
      raise
    # A small file of one's own easily misses the default 5-core.
    raise ValueError(
      f"{path}: {e} ({data.catalog.num_users} users, "
      f"{data.catalog.num_items} items, {data.num_interactions} interactions "
      "before filtering); lower dataset.kcore"
    ) from e


def load_split(config) -> LeaveOneOutSplit:
  """The leave-one-out split a dataset config describes.

  Applies k-core filtering, then ``max_users`` (CPU variants keep the first
  users and the items they consumed), then the OpenP5 split.
  """
  data = load_dataset(config)
  max_users = getattr(config, "max_users", -1)
  if max_users is not None and max_users > 0:
    data = data.first_users(max_users)
  try:
    return leave_one_out(data, getattr(config, "max_history", 20))
  except ValueError as e:
    if config.name not in USER_FILE_DATASETS:
      raise
    # Name the user's file: the dataset name alone does not say which.
    raise ValueError(f"{config.path}: {e}") from e
