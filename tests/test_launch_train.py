"""The launcher: --help, and the small CPU variant of the main job."""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def _launch(*args, timeout=300):
  return subprocess.run(
    [sys.executable, str(REPO_ROOT / "launch" / "train.py"), *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )


def test_help_explains_flags():
  out = _launch("--help")
  # absl exits with status 1 after printing help.
  assert out.returncode in (0, 1), out.stderr
  for word in ("--config", "--workdir", "--stage", "stage1"):
    assert word in out.stdout


def test_small_cf_and_eval_run_writes_metrics_and_resumes(tmp_path):
  workdir = tmp_path / "wd"
  args = (
    "--config=configs/default.py:small",
    f"--workdir={workdir}",
    "--config.eval.splits=('test',)",
  )
  out = _launch("--stage=eval", *args)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "| als |" in out.stdout and "| popularity |" in out.stdout
  metrics = json.loads((workdir / "eval" / "baselines.json").read_text())
  # What the table printed is what the file holds.
  hr = metrics["als"]["test"]["filtered"]["HR@10"]
  se = metrics["als"]["test"]["filtered"]["HR@10_se"]
  assert f"{hr:.4f} ± {se:.4f}" in out.stdout
  assert metrics["als"]["test"]["filtered"]["users"] == 300
  assert (workdir / "eval" / "baselines_test_filtered.png").exists()
  table = workdir / "cf" / "cf_table.npy"
  stamp = table.stat().st_mtime_ns
  out = _launch("--stage=cf", *args)  # same config: the table is reused
  assert out.returncode == 0, out.stderr[-3000:]
  assert table.stat().st_mtime_ns == stamp


def test_unknown_config_field_is_rejected(tmp_path):
  out = _launch(
    "--config=configs/default.py:small",
    "--config.cf.dimm=3",
    f"--workdir={tmp_path}",
  )
  assert out.returncode != 0
  assert "dimm" in out.stderr
