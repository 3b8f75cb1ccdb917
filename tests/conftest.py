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
