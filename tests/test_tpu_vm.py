"""The Cloud TPU VM launcher's dry run prints exactly the expected commands."""

import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
GOLDEN = REPO / "tests" / "golden" / "tpu_vm_dry_run.txt"
# The flags that produced the golden file (a v5e-32 pod slice, Spot, a
# stage-2 run in bfloat16, deleted afterwards).
FLAGS = [
  "--name=ilm",
  "--zone=us-west4-a",
  "--accelerator_type=v5litepod-32",
  "--workdir=/mnt/bucket/ilm",
  "--config=configs/ml1m.py:full",
  "--train_arg=--stage=stage2",
  "--train_arg=--config.stage2.llm_dtype=bfloat16",
  "--delete",
  "--spot",
  "--dry_run",
]


def _dry_run(*flags) -> str:
  done = subprocess.run(
    [sys.executable, "launch/tpu_vm.py", *flags],
    cwd=REPO,
    capture_output=True,
    text=True,
    check=True,
  )
  return done.stdout


def test_dry_run_prints_the_golden_commands():
  assert _dry_run(*FLAGS) == GOLDEN.read_text()


def test_dry_run_keeps_the_vm_and_skips_setup_when_asked():
  out = _dry_run(
    "--name=v", "--zone=z", "--workdir=w", "--skip_setup", "--dry_run"
  )
  lines = [line for line in out.splitlines() if line.startswith("+ ")]
  assert [line.split()[5] for line in lines] == ["describe", "create", "ssh"]
  assert "--worker=all" in lines[-1] and "--distributed" in lines[-1]
  assert "--accelerator-type=v5litepod-8" in lines[1]
