"""Two CPU processes joined through jax.distributed train like one.

The launcher runs a tiny stage 1 twice on the same global mesh of 8 CPU
devices: once as one process holding all 8, once as two processes of 4
that join through ``--coordinator_address`` (each reading its half of
every global batch). Both must log the same losses and evaluations, only
process 0 may write the job's files, and the two-process checkpoint must
restore in a single process to the one-process run's parameters.
"""

import ast
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from ilm_jax import experiment_config, files
from ilm_jax.checkpoint import manager as ckpt
from ilm_jax.pipeline import cf as cf_stage
from tests.tiny import tiny_bert_dir

REPO = pathlib.Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "multihost_worker.py"
NUM_STEPS = 4
# Entry points that run stages: they take the multi-host flags
# (distributed.define_flags) and print their tables on process 0 only.
MULTI_HOST_LAUNCHERS = ("train", "sasrec", "compare_stage2", "accelerator_run")
# Entry points of one host's work (conversion, data export, chat, reports):
# they start like the others, without the flags.
ONE_HOST_LAUNCHERS = (
  "chat",
  "convert_checkpoint",
  "drills",
  "memory_table",
  "prepare_data",
  "prompt_lengths",
)


@pytest.mark.parametrize("name", MULTI_HOST_LAUNCHERS + ONE_HOST_LAUNCHERS)
def test_entry_points_start_alike(name):
  """``main`` opens with ``console.start`` (stray arguments refused, quiet
  logs, the job joined when its flags ask); the stage launchers define the
  flags and print only on process 0."""
  tree = ast.parse((REPO / "launch" / f"{name}.py").read_text())
  main = next(
    n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"
  )
  assert ast.unparse(main.body[0]).startswith("console.start(argv"), name
  module_calls = {
    ast.unparse(n.value) for n in tree.body if isinstance(n, ast.Expr)
  }
  multi_host = name in MULTI_HOST_LAUNCHERS
  assert ("distributed.define_flags()" in module_calls) == multi_host
  if multi_host:
    assert "distributed.is_primary()" in ast.unparse(main), name


def _overrides(bert_dir) -> dict:
  """A stage 1 of a few seconds: 24 users, a 2-layer BERT of width 16."""
  return {
    "dataset.max_users": 24,
    "cf.dim": 8,
    "cf.sweeps": 2,
    "qformer.bert_path": str(bert_dir),
    "qformer.num_queries": 2,
    "qformer.num_cf_tokens": 2,
    "qformer.embed_dim": 8,
    "qformer.max_text_length": 12,
    "stage1.batch_size": 8,
    "stage1.train.num_steps": NUM_STEPS,
    "stage1.train.warmup_steps": 1,
    "stage1.train.checkpoint_every": 2,
    "stage1.train.log_every": 1,
    "stage1.train.progress_bar": False,
    "stage1.eval.batch_size": 64,
    "stage1.eval.candidates": 10,
  }


def _config(overrides: dict):
  config = experiment_config.get_config("ml-latest-small", "")
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for name in parents:
      node = node[name]
    node[leaf] = value
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, overrides, log, devices, extra=()) -> subprocess.Popen:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices))
  args = [
    sys.executable,
    str(WORKER),
    str(log),
    "--",
    "--config=configs/default.py",
    f"--workdir={workdir}",
    "--stage=stage1",
    "--compilation_cache=",
    *(f"--config.{k}={v}" for k, v in overrides.items()),
    *extra,
  ]
  return subprocess.Popen(
    args,
    cwd=REPO,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _finish(process: subprocess.Popen, name: str) -> str:
  try:
    out, _ = process.communicate(timeout=1500)
  except subprocess.TimeoutExpired:
    process.kill()
    out, _ = process.communicate()
  assert process.returncode == 0, f"{name} failed:\n{out[-4000:]}"
  return out


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
  overrides = _overrides(tiny_bert_dir(tmp_path / "bert"))
  single, multi = tmp_path / "single", tmp_path / "multi"
  # The CF table both runs start from (ALS of two sweeps, a second).
  cf_stage.cf_table(_config(overrides), single)
  shutil.copytree(single / cf_stage.CF_DIR, multi / cf_stage.CF_DIR)

  address = f"localhost:{_free_port()}"
  logs = [tmp_path / f"writes{i}.txt" for i in range(3)]
  jobs = [
    _launch(
      multi,
      overrides,
      logs[i],
      devices=4,
      extra=(
        f"--coordinator_address={address}",
        "--num_processes=2",
        f"--process_id={i}",
      ),
    )
    for i in range(2)
  ]
  jobs.append(_launch(single, overrides, logs[2], devices=8))
  outputs = [_finish(p, n) for p, n in zip(jobs, ("proc0", "proc1", "one"))]
  assert "results:" in outputs[0] and "results:" not in outputs[1]

  # Same global batches on the same global mesh: the same losses. (The
  # reductions across processes may round differently, which can flip an
  # argmax or a top-10 cut between near-tied scores of the tiny random
  # model: accuracies and recalls are compared to within a few examples.
  # Adam moves every parameter by about the learning rate whatever its
  # gradient's size, so a near-zero gradient whose rounding differs moves
  # its parameter differently: after a few steps the gradient norm differs
  # in the fourth digit, the losses in the sixth.)
  histories = [
    files.read_json(w / "stage1" / "metrics.json") for w in (single, multi)
  ]
  for split in ("train", "eval"):
    one, two = (h[split] for h in histories)
    assert [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
      for key in a:
        ranked = key.endswith("_acc") or "_recall_at_" in key
        tolerance = {"atol": 1 / 8} if ranked else {}
        rtol = 1e-3 if key == "grad_norm" else 1e-4
        np.testing.assert_allclose(
          b[key], a[key], rtol=rtol, err_msg=key, **tolerance
        )
  losses = [[r["loss"] for r in h["train"]] for h in histories]
  np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
  assert [r["step"] for r in histories[1]["train"]] == [1, 2, 3, 4]

  # Process 0 wrote the job's files; process 1 wrote nothing in the
  # workdir outside the checkpoints, whose shards every process writes.
  def written(log):
    lines = log.read_text().splitlines()
    return [p for p in lines if pathlib.Path(p).is_relative_to(multi)]

  assert any("metrics.json" in p for p in written(logs[0]))
  stray = [p for p in written(logs[1]) if "/checkpoints/" not in p]
  assert stray == []
  assert (multi / "results.json").exists()

  # The collective checkpoint restores in this (single) process, to the
  # one-process run's parameters within one AdamW step (the learning rate
  # bounds a step: Adam turns rounding in near-zero gradients into up to a
  # full step; a checkpoint of another step would be several steps off).
  step = float(_config(overrides).stage1.train.learning_rate)
  params = [
    ckpt.load_params(w / "stage1" / "checkpoints")[0] for w in (single, multi)
  ]
  flat = [dict(_leaves(p)) for p in params]
  assert flat[0].keys() == flat[1].keys()
  for key, value in flat[0].items():
    np.testing.assert_allclose(flat[1][key], value, rtol=0, atol=step)


def _leaves(tree, prefix=""):
  """(path, numpy leaf) pairs of a nested dict."""
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _leaves(v, f"{prefix}/{k}")
  else:
    yield prefix, np.asarray(tree)
