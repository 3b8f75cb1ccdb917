"""Damaged state files: refit, rewrite, or stop naming the file and the way
out; and the drill's verdicts on such runs."""

import logging
import pathlib

import numpy as np
import pytest

from ilm_jax import files
from ilm_jax.cf import table as table_lib
from ilm_jax.drills import resume
from ilm_jax.experiment_config import base_config
from ilm_jax.pipeline import cf as cf_stage
from ilm_jax.pipeline import run as pipeline
from ilm_jax.train.summaries import MetricsLog


def _half(path: pathlib.Path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
  path = tmp_path / "state.json"
  files.write_json(path, {"step": 1})
  with pytest.raises(RuntimeError):
    with files.open_atomic(path) as f:
      f.write('{"step": 2, "half')
      raise RuntimeError("killed mid-write")
  assert files.read_json(path) == {"step": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_damaged_json_names_file_line_and_way_out(tmp_path):
  path = tmp_path / "metrics.json"
  files.write_json(path, {"train": [{"step": 1, "loss": 2.0}], "final": {}})
  _half(path)
  with pytest.raises(ValueError, match=r"metrics\.json:\d+:\d+: damaged JSON"):
    files.read_json(path)
  with pytest.raises(ValueError) as e:
    MetricsLog(tmp_path)
  assert str(path) in str(e.value)
  assert f"delete {tmp_path} to train this stage afresh" in str(e.value)


@pytest.fixture(scope="module")
def cf_workdir(tmp_path_factory):
  config = base_config()
  config.dataset.max_users = 24
  config.cf.dim, config.cf.sweeps = 4, 2
  workdir = tmp_path_factory.mktemp("cf")
  table = cf_stage.cf_table(config, workdir)
  return config, workdir, table


@pytest.mark.parametrize(
  "damaged", [table_lib.META_FILE, table_lib.TABLE_FILE, "new table"]
)
def test_damaged_or_mismatched_cf_table_is_refit(
  cf_workdir, tmp_path, caplog, damaged
):
  import shutil

  config, source, table = cf_workdir
  shutil.copytree(source, tmp_path / "w")
  out = tmp_path / "w" / cf_stage.CF_DIR
  if damaged == "new table":
    # Killed between the table and its metadata: a new table, old meta.
    files.save_npy(out / table_lib.TABLE_FILE, table.embeddings * 2)
  else:
    _half(out / damaged)
  with pytest.raises(table_lib.DamagedTableError, match="cf"):
    table_lib.load_cf_table(out)
  with caplog.at_level(logging.WARNING):
    refit = cf_stage.cf_table(config, tmp_path / "w")
  assert "refitting the table" in caplog.text
  np.testing.assert_array_equal(refit.embeddings, table.embeddings)
  assert table_lib.load_cf_table(out).num_items == table.num_items


def test_damaged_results_json_stops_one_stage_and_is_rewritten_by_all(
  tmp_path, caplog
):
  path = tmp_path / pipeline.RESULTS_FILE
  files.write_json(path, {"cf": {"rows": 3}, "stage1": {"loss": 1.0}})
  _half(path)
  config = base_config()
  with pytest.raises(ValueError) as e:
    pipeline.run(config, tmp_path, "cf")
  assert str(path) in str(e.value) and "--stage=all" in str(e.value)
  with caplog.at_level(logging.WARNING):
    assert pipeline._earlier_results(path, "all") == {}
  assert "rewritten whole" in caplog.text


def test_drill_verdicts(tmp_path):
  damaged = tmp_path / "stage1" / "metrics.json"
  same = {"stage2": {"loss": 1.0, "train_seconds": 5.0}}
  later = {"stage2": {"loss": 1.0, "train_seconds": 9.0}}
  other = {"stage2": {"loss": 1.5, "train_seconds": 5.0}}
  assert resume.classify(0, "", damaged, later, same) == "recovered"
  assert resume.classify(0, "", damaged, other, same) == "results_differ"
  message = f"ValueError: {damaged}:1:9: damaged JSON; restore it, or ..."
  assert resume.classify(1, message, damaged, None, same) == (
    "stopped_with_message"
  )
  assert resume.classify(1, "IndexError: list", damaged, None, same) == (
    "unrecovered"
  )
  assert resume.differences(other, same) == ["stage2.loss: 1.5 != 1.0"]
