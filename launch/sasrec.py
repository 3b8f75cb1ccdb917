r"""Trains the SASRec baseline and ranks the whole catalogue with it.

Reads the dataset, evaluation and mesh sections of an experiment config;
SASRec's own fields are ``--config.sasrec.*`` (``ilm_jax/sasrec_config.py``);
the main job trains the same model in its "eval" stage.
Writes ``<workdir>/sasrec`` (checkpoints, TensorBoard, metrics; a rerun
resumes) and ``<workdir>/eval/sasrec.{json,md}``, and prints HR@k / NDCG@k
(± SE), filtered and unfiltered, on each held-out split.

Examples:
  python launch/sasrec.py --config=configs/default.py --workdir=workdir/sasrec
  python launch/sasrec.py --config=configs/ml100k.py \
      --config.sasrec.loss=softmax --config.sasrec.train.num_steps=500 \
      --workdir=workdir/sasrec_ml100k
"""

import os
import time

from absl import app, flags
from ml_collections import config_flags

from ilm_jax import console, distributed, workdir_lock
from ilm_jax.eval.report import markdown_table
from ilm_jax.pipeline.baselines import MODES, summary_rows
from ilm_jax.pipeline.sasrec import run_sasrec

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/default.py",
  "Experiment config file (dataset, eval, mesh and sasrec sections are "
  "used). "
  "Override fields with --config.<field>=<value>.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/sasrec", "Where SASRec writes (and resumes from)."
)
_CACHE = console.define_compilation_cache()
_HOST_MEMORY = console.define_host_memory()
distributed.define_flags()


def main(argv):
  console.start(argv, _CACHE.value, _HOST_MEMORY.value)
  config = _CONFIG.value
  start = time.perf_counter()
  with workdir_lock.hold(_WORKDIR.value):  # one run per workdir
    results = run_sasrec(config, _WORKDIR.value)
  seconds = time.perf_counter() - start
  if not distributed.is_primary():
    return  # One copy of the tables, not one per host.
  name = config.dataset.name
  for split in config.eval.splits:
    for mode in MODES:
      rows = summary_rows(results, split, mode)
      print(markdown_table(rows, f"{name}: SASRec, {split}, {mode}"))
  print(f"wall time: {seconds:.1f} s (training and evaluation)")
  print(f"results: {os.path.join(_WORKDIR.value, 'eval', 'sasrec.md')}")


if __name__ == "__main__":
  app.run(main)
