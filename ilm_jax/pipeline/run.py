"""Runs the stages an experiment asks for, in order, resuming from the workdir.

Stages: "cf" (ALS table), "eval" (popularity and CF baselines), "stage1"
(Q-Former item-language pre-training), "stage2" (ILM on the frozen LLM),
"all" (every stage that exists, in order).
"""

from __future__ import annotations

import importlib
import json
import pathlib

import ml_collections

from ilm_jax.pipeline.baselines_stage import run_baselines
from ilm_jax.pipeline.cf_stage import run_cf

STAGES = ("cf", "eval", "stage1", "stage2", "all")
# Stages implemented in their own packages, found at run time so the
# foundation stages work before (and without) the model stages.
_MODEL_STAGES = {
  "stage1": "ilm_jax.train.stage1",
  "stage2": "ilm_jax.train.stage2",
}


def available_stages() -> list[str]:
  """Stages this installation can run, in pipeline order."""
  out = ["cf", "eval"]
  for stage, module in _MODEL_STAGES.items():
    if importlib.util.find_spec(module) is not None:
      out.append(stage)
  return out


def run(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path, stage: str
) -> dict:
  """Runs ``stage`` (or all stages) and returns {stage: its results}."""
  if stage not in STAGES:
    raise ValueError(f"unknown stage {stage!r}; choose from {STAGES}")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  todo = available_stages() if stage == "all" else [stage]
  results = {}
  for name in todo:
    if name == "cf":
      table = run_cf(config, workdir)
      results["cf"] = {"rows": int(table.embeddings.shape[0])}
    elif name == "eval":
      run_cf(config, workdir)  # no-op when the table is up to date
      results["eval"] = run_baselines(config, workdir)
    else:
      run_cf(config, workdir)  # both model stages read the CF table
      if importlib.util.find_spec(_MODEL_STAGES[name]) is None:
        raise NotImplementedError(f"stage {name!r} is not available yet")
      module = importlib.import_module(_MODEL_STAGES[name])
      results[name] = module.run(config, workdir)
  # Merge with what earlier invocations wrote, so running stages one at a
  # time leaves the same results.json as running them all.
  path = workdir / "results.json"
  merged = json.loads(path.read_text()) if path.exists() else {}
  merged.update(json.loads(json.dumps(results, default=str)))
  path.write_text(json.dumps(merged, indent=2))
  return results
