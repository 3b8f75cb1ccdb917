"""The accelerator run's script, end to end in a tiny CPU form."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

# Tiny shapes on top of the :accel budget: the script's path, not its scale.
TINY = (
  "dataset.max_users=24",
  "cf.dim=8",
  "cf.sweeps=2",
  "sasrec.dim=8",
  "sasrec.train.num_steps=2",
  "sasrec.train.progress_bar=False",
  "stage2.llm=tiny",
  "stage2.examples_per_task=8",
  "stage2.length_buckets=(256, 512)",
  "stage2.max_history=5",
  "stage2.rerank.num_candidates=5",
  "stage2.batch_size=8",
  "stage2.list_tokens=1",
  "stage2.train.num_steps=2",
  "stage2.train.progress_bar=False",
  "stage2.eval.max_users=4",
  "stage2.eval.batch_size=4",
  "stage2.eval.max_text_prompts=2",
  "stage2.rerank.labels=letters",
  "stage2.rerank.examples_per_task=8",
  "stage2.rerank.max_users=6",
)


def _run(*args, env=None):
  return subprocess.run(
    [sys.executable, "launch/accelerator_run.py", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    env=env,
  )


def test_help_and_bad_override():
  out = _run("--help")
  assert out.returncode in (0, 1), out.stderr  # absl's --help exits 1
  for flag in (
    "--datasets",
    "--variants",
    "--sweep",
    "--override",
    "--coordinator_address",
    "--[no]distributed",
  ):
    assert flag in out.stdout
  bad = _run("--override=stage2.no_such_field=1")
  assert bad.returncode != 0 and "no field 'stage2.no_such_field'" in (
    bad.stderr
  )


@pytest.mark.slow
def test_tiny_cpu_form_writes_the_report(tmp_path):
  # The second dataset's files are missing (an empty data root): the run
  # stops there, with the first dataset's report already written.
  empty = tmp_path / "no_data"
  empty.mkdir()
  out = _run(
    "--datasets=default,ml100k",
    "--variants=text",
    f"--workdir={tmp_path}",
    *(f"--override={o}" for o in TINY),
    env={**os.environ, "ILM_DATA_ROOT": str(empty)},
  )
  assert out.returncode != 0 and "ml-100k" in out.stderr, out.stderr[-3000:]
  report = json.loads((tmp_path / "accelerator_run.json").read_text())
  assert list(report["datasets"]) == ["default"]
  assert report["hardware"]["platform"] == "cpu"
  assert report["budget"] == "accel" and report["variants"] == ["text"]
  run = report["datasets"]["default"]
  # Collaborative identifiers and the accelerator recipe's evaluations,
  # under the overridden budget.
  assert run["budget"]["indexing"] == "collaborative"
  assert run["budget"]["balanced_tree"] is True
  assert run["budget"]["steps"] == 2
  assert {"text", "als (all users)", "sasrec (all users)"} <= set(run["rows"])
  assert "HR@10" in run["rows"]["text"]
  assert "straightforward HR@10" in run["rows"]["text"]
  markdown = (tmp_path / "accelerator_run.md").read_text()
  assert "# Accelerator run" in markdown and "| text |" in markdown
  assert "(1 of 2 datasets so far)" in markdown
  assert (tmp_path / "default" / "stage2_text" / "results.json").exists()
