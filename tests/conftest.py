"""Test set-up: 8 fake CPU devices so sharded code runs, and data paths."""

import os

# Must happen before jax initialises its backend (i.e. before any test imports
# jax and touches a device).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_NUM_CPU_DEVICES", "8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def _require(path: pathlib.Path) -> pathlib.Path:
  """Returns path, or skips (fails under CI) when ../shared is missing."""
  if path.exists():
    return path
  msg = (
    f"{path} not found: the real datasets are expected in ../shared/data "
    "beside the repository"
  )
  if os.environ.get("CI", "").lower() == "true":
    pytest.fail(msg + " (CI=true: a missing ../shared is a failure)")
  pytest.skip(msg)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The directory holding the real datasets (../shared/data)."""
  return _require(SHARED_DATA)


@pytest.fixture
def toy_split():
  """A small leave-one-out split: 6 users, 12 items with titles and genres."""
  import numpy as np

  from ilm_jax.data.dataset import Catalog
  from ilm_jax.data.split import LeaveOneOutSplit

  num_users, num_items = 6, 12
  rng = np.random.default_rng(0)
  genres = [["Comedy", "Drama", "Horror|Comedy", ""][i % 4] for i in range(12)]
  catalog = Catalog(
    item_ids=np.array([str(i) for i in range(num_items)]),
    user_ids=np.array([str(u) for u in range(num_users)]),
    item_fields={
      "title": np.array([f"Film {i}" for i in range(num_items)]),
      "genres": np.array(genres),
    },
  )
  train = [
    rng.choice(num_items, size=4 + u, replace=False).astype(np.int32)
    for u in range(num_users)
  ]
  valid = rng.integers(0, num_items, num_users).astype(np.int32)
  test = rng.integers(0, num_items, num_users).astype(np.int32)
  return LeaveOneOutSplit("toy", catalog, train, valid, test, max_history=5)
