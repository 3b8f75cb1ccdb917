"""The SASRec benchmark (launch/bench_sasrec.py): flags, and a smoke run.

No timing is asserted: the run is far too short and the machine shared.
"""

import json
import subprocess
import sys

from conftest import REPO_ROOT


def _bench(*args, timeout=300):
  return subprocess.run(
    [sys.executable, str(REPO_ROOT / "launch" / "bench_sasrec.py"), *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=timeout,
    env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"},
  )


def test_help_lists_flags():
  out = _bench("--help")
  # absl exits with status 1 after printing help.
  assert out.returncode in (0, 1), out.stderr
  for word in ("--config", "--workdir", "--rounds", "--steps", "--loss"):
    assert word in out.stdout
  assert "--torch_threads" in out.stdout


def test_weight_decay_is_refused_naming_the_field(tmp_path):
  out = _bench(
    "--config.sasrec.train.weight_decay=0.1", f"--workdir={tmp_path}"
  )
  assert out.returncode != 0
  assert "config.sasrec.train.weight_decay" in out.stderr
  assert not (tmp_path / "bench_sasrec.json").exists()


def test_smoke_run_writes_both_implementations_figures(tmp_path):
  # Two heads, so that the per-head layout of our attention kernels is
  # mapped onto PyTorch's (the run asserts score and loss parity itself).
  out = _bench(
    "--config.dataset.max_users=30",
    "--config.sasrec.dim=16",
    "--config.sasrec.num_heads=2",
    "--config.sasrec.max_len=12",
    "--config.sasrec.batch_size=8",
    "--rounds=1",
    "--steps=2",
    "--torch_threads=1",
    f"--workdir={tmp_path}",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads((tmp_path / "bench_sasrec.json").read_text())
  assert result["users"] == 30
  assert result["loss"] == "softmax"  # the config's default
  assert result["model"]["num_heads"] == 2
  assert result["parameters"]["ours"] == result["parameters"]["torch"]
  # Item table (with the padding row), positions, then per block four
  # D x D attention matrices, two D x D FFN layers with biases, two norms;
  # the final norm: the overridden shape reached both models.
  d, items = 16, result["items"]
  block = 6 * d * d + 2 * d + 2 * 2 * d
  assert (
    result["parameters"]["ours"] == (items + 1) * d + 12 * d + 2 * block + 2 * d
  )
  assert result["parity"]["max_score_diff"] < 1e-4
  losses = result["parity"]["loss_dropout_off"]
  assert abs(losses["ours"] - losses["torch"]) < 1e-3 * losses["ours"]
  for figures in (result["ours"], result["torch"]["1"]):
    for key in ("ms_per_step", "s_per_epoch", "eval_ms"):
      assert figures[key] > 0
  assert result["steps_per_epoch"] == 30 / 8
  assert result["threads"]["torch"] == [1]
  assert result["threads"]["xla_cpu"] >= 1
  assert result["ratio"]["step"] > 0 and result["ratio"]["eval"] > 0
  lines = out.stdout.strip().splitlines()
  assert any(line.startswith("PyTorch n=1") for line in lines)
  assert lines[-1].startswith("ratio ours/PyTorch")
