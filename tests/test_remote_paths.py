"""A ``gs://`` workdir stays remote: stage paths keep their scheme.

No network: a fake bucket (``etils.epath.testing.mock_epath``) maps
``gs://bucket/...`` to a local folder, and tensorboardX's ``gs://`` writer
to files there. A stage that built a workdir path with ``pathlib`` would
write to ``./gs:/bucket/...`` in the working directory instead, which the
tests check stays absent.
"""

import os
import pathlib
import tempfile

import numpy as np
import pytest
from etils.epath import testing as epath_testing
from tensorboardX import record_writer

from ilm_jax import experiment_config, files
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.data import records
from ilm_jax.pipeline import run as pipeline
from ilm_jax.train import provenance, summaries

WORKDIR = "gs://bucket/run"
SCHEME = "gs://"
# epath backend calls whose first argument is the path (then mode, flags).
_ONE_PATH = ("exists", "isdir", "listdir", "makedirs", "mkdir", "remove")
_ONE_PATH += ("rmtree", "stat", "walk")
# ... and those that take a second path.
_TWO_PATHS = ("copy", "rename", "replace")


class _FakeBucket:
  """``gs://<path>`` is ``<root>/<path>``, as a bucket with no directories
  (writing an object creates its parents)."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(SCHEME):
      return str(self.root / path[len(SCHEME) :])
    return path

  def remote(self, path: str) -> str:
    prefix = str(self.root) + os.sep
    return SCHEME + path[len(prefix) :] if path.startswith(prefix) else path

  def open(self, original, path, mode):
    if any(c in mode for c in "wa"):
      pathlib.Path(self.local(path)).parent.mkdir(parents=True, exist_ok=True)
    return original(self.local(path), mode)

  def glob(self, original, pattern):
    return [self.remote(p) for p in original(self.local(pattern))]

  def mocks(self) -> dict:
    def one(original, path, *args, **kwargs):
      return original(self.local(path), *args, **kwargs)

    def two(original, path, dst, *args, **kwargs):
      return original(self.local(path), self.local(dst), *args, **kwargs)

    return {
      **dict.fromkeys(_ONE_PATH, one),
      **dict.fromkeys(_TWO_PATHS, two),
      "open": self.open,
      "glob": self.glob,
    }

  # tensorboardX's writer factory interface (record_writer).
  def directory_check(self, path):
    pathlib.Path(self.local(path)).mkdir(parents=True, exist_ok=True)

  def open_events(self, path):
    return open(self.local(path), "wb")  # noqa: SIM115 - the writer closes


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The fake bucket's folder; the working directory is an empty one."""
  fake = _FakeBucket(tmp_path / "bucket")
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  events = type("Events", (), {})()
  events.directory_check = fake.directory_check
  events.open = fake.open_events
  monkeypatch.setitem(record_writer.REGISTERED_FACTORIES, "gs", events)
  with epath_testing.mock_epath(**fake.mocks()):
    yield fake.root / "bucket" / "run"
  # Nothing went to a local "gs:" folder (what pathlib makes of gs://).
  assert list(cwd.iterdir()) == []


def test_path_keeps_object_storage_remote():
  remote = files.path(WORKDIR)
  assert str(remote) == WORKDIR
  assert str(remote / "cf" / "table.npy") == f"{WORKDIR}/cf/table.npy"
  assert str(files.path(remote / "stage2")) == f"{WORKDIR}/stage2"
  assert str(files.path(WORKDIR, absolute=True)) == WORKDIR
  assert files.is_remote(remote) and not files.is_remote("workdir/run")
  local = files.path("workdir/run")
  assert isinstance(local, pathlib.Path) and str(local) == "workdir/run"
  assert files.path("workdir/run", absolute=True).is_absolute()
  # What the helper is for: pathlib makes a local folder of a bucket.
  assert str(pathlib.Path(WORKDIR)) == "gs:/bucket/run"


def _config():
  """The CF table and the popularity / ALS baselines on 24 users."""
  config = experiment_config.get_config("ml-latest-small", "small")
  config.dataset.max_users = 24
  config.cf.dim, config.cf.sweeps = 8, 2
  config.eval.baselines = ("popularity", "als")
  config.eval.splits = ("test",)
  return config


def test_cf_and_baselines_write_into_the_bucket(bucket):
  config = _config()
  results = pipeline.run(config, WORKDIR, "eval")
  assert results["eval"]["als"]["test"]["filtered"]["users"] == 24
  for name in (
    "config.json",
    "results.json",
    "cf/cf_table.npy",
    "cf/metrics.json",
    "eval/baselines.json",
    "eval/baselines.md",
  ):
    assert (bucket / name).is_file(), name
  assert list((bucket / "eval").glob("*.png"))
  assert list((bucket / "eval" / "tensorboard").glob("events.*"))
  # A rerun reads the table back from the bucket (hash and array checked)
  # instead of refitting it.
  table = bucket / "cf" / "cf_table.npy"
  written = table.stat().st_mtime_ns
  pipeline.run(config, WORKDIR, "cf")
  assert table.stat().st_mtime_ns == written


def test_training_loop_writers_stay_in_the_bucket(bucket, monkeypatch):
  stage = f"{WORKDIR}/stage1"
  log = summaries.MetricsLog(stage)
  log.write("train", 1, {"loss": 2.5})
  log.close()
  assert files.read_json(bucket / "stage1" / "metrics.json")["train"] == [
    {"step": 1, "loss": 2.5}
  ]
  assert list((bucket / "stage1" / "tensorboard").glob("events.*"))
  provenance.record(files.path(stage), {"lr": 0.1})
  assert provenance.check(files.path(stage), {"lr": 0.2}) == ["lr: 0.1 -> 0.2"]
  # Orbax is handed the bucket path (it writes gs:// itself, through
  # tensorstore, which this fake cannot stand in for).
  handed = []
  monkeypatch.setattr(
    ckpt.ocp, "CheckpointManager", lambda path, **_: handed.append(path)
  )
  ckpt.make_manager(f"{stage}/checkpoints", 1, 1)
  assert [str(p) for p in handed] == [f"{stage}/checkpoints"]


def test_training_records_round_trip_through_the_bucket(
  bucket, tmp_path, monkeypatch
):
  """array_record writes local files only: the records are uploaded whole
  and read from a local copy named by their hash."""
  monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
  (tmp_path / "tmp").mkdir()
  examples = [{"tokens": np.arange(n, dtype=np.int32), "n": n} for n in (3, 5)]
  stem = f"{WORKDIR}/stage2/examples/train"
  lengths = {"lengths": np.array([3, 5])}
  assert records.write_records(stem, examples, lengths)
  assert (bucket / "stage2/examples/train.array_record").is_file()
  assert (bucket / "stage2/examples/train.index.npz").is_file()
  source = records.RecordSource(stem)
  assert len(source) == 2
  np.testing.assert_array_equal(source.index["lengths"], [3, 5])
  np.testing.assert_array_equal(source[1]["tokens"], np.arange(5))
  assert list((tmp_path / "tmp" / "ilm_jax_records").glob("*.array_record"))
  # The same examples again: reused, not uploaded a second time.
  assert not records.write_records(stem, examples, lengths)
