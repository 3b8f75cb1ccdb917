"""Runs the stages an experiment asks for, in order, resuming from the workdir.

Stages: "cf" (ALS table), "eval" (popularity and CF baselines), "stage1"
(Q-Former item-language pre-training), "stage2" (ILM on the frozen LLM),
"all" (every stage, in order).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

from ilm_jax import config_checks, files
from ilm_jax.pipeline import stage1, stage2
from ilm_jax.pipeline.baselines import run_baselines
from ilm_jax.pipeline.cf import cf_table

STAGES = ("cf", "eval", "stage1", "stage2", "all")
# Stage name -> run(config, workdir) -> results, in pipeline order; each
# reads what the stages before it wrote to the workdir.
_RUNNERS = {
  "cf": lambda config, workdir: {
    "rows": int(cf_table(config, workdir).embeddings.shape[0])
  },
  "eval": run_baselines,
  "stage1": stage1.run,
  "stage2": stage2.run,
}


def run(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stage: str
) -> dict:
  """Runs ``stage`` (or all stages) and returns {stage: its results}."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
  config_checks.check(config)  # bad values fail now, naming the field
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_text(
    workdir / "config.json", config.to_json_best_effort(indent=2)
  )
  todo = list(_RUNNERS) if stage == "all" else [stage]
  results = {name: _RUNNERS[name](config, workdir) for name in todo}
  # Merge with what earlier invocations wrote, so running stages one at a
  # time leaves the same results.json as running them all.
  path = workdir / "results.json"
  merged = files.read_json(path) if path.exists() else {}
  merged.update(json.loads(json.dumps(results, default=str)))
  files.write_json(path, merged)
  return results
