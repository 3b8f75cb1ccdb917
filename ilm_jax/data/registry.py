"""Named datasets and where their files live.

``load_dataset(config)`` is the single entry point: config fields ``name``,
``path`` (a file or directory; empty = the default location), ``kcore`` and
``min_rating``. The default for every dataset except the embedded
MovieLens latest-small is ``../shared/data`` beside the repository, or the
directory in the ``ILM_DATA_ROOT`` environment variable.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

from ilm_jax.data import dataset as ds
from ilm_jax.data import movielens, openp5
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


# name -> (loader(path or None, min_rating), default k-core)
DATASETS: dict[str, tuple[Callable[..., ds.Dataset], int]] = {
  "ml-latest-small": (_latest_small, 5),
  "ml-100k": (_ml100k, 5),
  "ml-1m": (_ml1m, 5),
  # OpenP5 files are already 5-core; filtering again changes nothing.
  "openp5-ml100k": (_openp5_ml100k, 5),
  "openp5-beauty": (_openp5_beauty, 5),
  "openp5-clothing": (_openp5_clothing, 5),
}


def load_dataset(config) -> ds.Dataset:
  """Loads and k-core filters the dataset a config names.

  Args:
    config: anything with ``name`` and optional ``path``, ``kcore`` (-1 = the
      dataset's default) and ``min_rating``.
  """
  name = config.name
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}")
  loader, default_k = DATASETS[name]
  path = getattr(config, "path", "") or None
  min_rating = getattr(config, "min_rating", 0.0)
  k = getattr(config, "kcore", -1)
  data = loader(pathlib.Path(path) if path else None, min_rating)
  return kcore(data, default_k if k is None or k < 0 else k)


def load_split(config) -> LeaveOneOutSplit:
  """The leave-one-out split a dataset config describes.

  Applies k-core filtering, then ``max_users`` (CPU variants keep the first
  users and the items they consumed), then the OpenP5 split.
  """
  data = load_dataset(config)
  max_users = getattr(config, "max_users", -1)
  if max_users is not None and max_users > 0:
    data = data.first_users(max_users)
  return leave_one_out(data, getattr(config, "max_history", 20))
