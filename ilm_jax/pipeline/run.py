"""Runs the stages an experiment asks for, in order, resuming from the workdir.

Stages: "cf" (ALS table), "eval" (popularity and CF baselines), "stage1"
(Q-Former item-language pre-training), "stage2" (ILM on the frozen LLM),
"all" (every stage, in order).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
from absl import logging

from ilm_jax import config_checks, files, workdir_lock
from ilm_jax.pipeline import figures, stage1, stage2
from ilm_jax.pipeline.baselines import baseline_table
from ilm_jax.pipeline.cf import cf_table

STAGES = ("cf", "eval", "stage1", "stage2", "all")
RESULTS_FILE = "results.json"
# Stage name -> run(config, workdir) -> results, in pipeline order; each
# reads what the stages before it wrote to the workdir.
_RUNNERS = {
  "cf": lambda config, workdir: {
    "rows": int(cf_table(config, workdir).embeddings.shape[0])
  },
  "eval": lambda config, workdir: baseline_table(config, workdir),
  "stage1": stage1.run,
  "stage2": stage2.run,
}


def run(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stage: str
) -> dict:
  """Runs ``stage`` (or all stages) and returns {stage: its results}.

  Holds the workdir's lock throughout (``workdir_lock``): a second run on
  the same workdir stops at once, naming the process that holds it.
  """
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
  config_checks.check(config)  # bad values fail now, naming the field
  workdir = files.path(workdir)  # gs://... stays remote
  with workdir_lock.hold(workdir):
    return _run_locked(config, workdir, stage)


def _run_locked(config, workdir: pathlib.Path, stage: str) -> dict:
  files.write_text(
    workdir / "config.json", config.to_json_best_effort(indent=2)
  )
  todo = list(_RUNNERS) if stage == "all" else [stage]
  path = workdir / RESULTS_FILE
  earlier = _earlier_results(path, stage)
  results = {name: _RUNNERS[name](config, workdir) for name in todo}
  # Merge with what earlier invocations wrote, so running stages one at a
  # time leaves the same results.json as running them all.
  earlier.update(json.loads(json.dumps(results, default=str)))
  files.write_json(path, earlier)
  # Curves of every stage and the redrawn stage-2 charts (figures.py).
  figures.write(workdir, config.dataset.name)
  return results


def _earlier_results(path: pathlib.Path, stage: str) -> dict:
  """What earlier invocations wrote to ``results.json`` (read before any
  stage runs, so a damaged file stops a single stage before its work).

  A damaged file is only a summary of what the stages keep in their own
  directories: a run of every stage rewrites it whole (with a warning); a
  run of one stage would have to drop the others' results, so it stops,
  naming the file and the way out.
  """
  if not path.exists():
    return {}
  try:
    earlier = files.read_json(path)
    if not isinstance(earlier, dict):
      raise ValueError(f"{path}: not a JSON object")
    return earlier
  except ValueError as e:
    if stage == "all":
      logging.warning("%s; every stage runs, so it is rewritten whole", e)
      return {}
    raise ValueError(
      f"{path}: damaged ({e}); run --stage=all to rewrite it from every "
      "stage's own files, or delete it"
    ) from e
