"""The main job's pictures: every stage's curves, stage 2's charts redrawn.

After the stages have run, ``write(workdir, name)``:

* draws ``<stage>/curves.png`` for every stage directory whose
  ``metrics.json`` holds a training history (stage 1, stage 2, SASRec...;
  the CF and baseline stages log no steps);
* redraws ``stage2/results.png`` with the popularity and ALS baselines of
  ``eval/baselines.json`` (full ranking, filtered, the generation's split)
  as reference lines beside the generation metrics;
* logs stage 2's generated texts (item descriptions, user profiles beside
  their references) to ``stage2/tensorboard`` as text summaries.
"""

from __future__ import annotations

import pathlib

from absl import logging

from ilm_jax import files
from ilm_jax.eval import charts
from ilm_jax.eval import evaluations as E
from ilm_jax.eval.evaluations import Evaluation
from ilm_jax.pipeline import stage2_report
from ilm_jax.train import summaries
from ilm_jax.train.summaries import METRICS_FILE

CURVES_FILE = "curves.png"
BASELINES_FILE = "eval/baselines.json"
STAGE2_RESULTS = "stage2/results.json"
# Baselines drawn as lines, by their key in baselines.json.
BASELINE_MODELS = {"popularity": "popularity", "als": "ALS"}


def write_curves(workdir: pathlib.Path, name: str) -> list[pathlib.Path]:
  """``curves.png`` in each stage directory with a training history."""
  written = []
  for metrics in sorted(workdir.glob(f"*/{METRICS_FILE}")):
    history = files.read_json(metrics)
    if not isinstance(history, dict) or not history.get("train"):
      continue
    path = metrics.parent / CURVES_FILE
    title = f"{name}: {metrics.parent.name} training"
    if charts.curves_chart(history, path, title):
      written.append(path)
  return written


def baselines_for(workdir: pathlib.Path, results: dict) -> dict:
  """{model: {"HR@10", "NDCG@10"}} of the baselines on the split the
  generation evaluations used ({} without baselines or generations)."""
  path = workdir / BASELINES_FILE
  splits = {e["split"] for e in E.result_entries(results, E.GENERATE)}
  if not path.exists() or len(splits) != 1:
    return {}
  split = splits.pop()
  saved = files.read_json(path)
  out = {}
  for key, label in BASELINE_MODELS.items():
    metrics = saved.get(key, {}).get(split, {}).get("filtered")
    if metrics:
      out[f"{label} (all users)"] = {
        m: metrics[m] for m in ("HR@10", "NDCG@10") if m in metrics
      }
  return out


def log_texts(stage_dir: pathlib.Path, results: dict) -> int:
  """Logs the text evaluations' examples to TensorBoard; returns how many."""
  texts = {}
  for entry in E.result_entries(results, E.TEXT):
    label = Evaluation.of_entry(entry).label
    for n, example in enumerate(entry.get("examples", [])):
      texts[f"samples/{label}/{n}"] = (
        f"**generated:** {example['generated']}\n\n"
        f"**reference:** {example['reference']}"
      )
  summaries.write_texts(stage_dir, int(results.get("steps", 0)), texts)
  return len(texts)


def write(workdir, name: str) -> list[pathlib.Path]:
  """Every picture of the workdir (module doc); returns the images."""
  workdir = files.path(workdir)
  written = write_curves(workdir, name)
  path = workdir / STAGE2_RESULTS
  if path.exists():
    results = files.read_json(path)
    if "evaluations" in results:  # results of today's layout
      stage2_report.write(
        results, path.parent, name, baselines_for(workdir, results)
      )
      written += [
        p
        for p in (
          path.parent / stage2_report.PLOT_FILE,
          path.parent / stage2_report.RERANK_PLOT_FILE,
        )
        if p.exists()
      ]
      log_texts(path.parent, results)
  logging.info("pictures: %s", ", ".join(str(p) for p in written))
  return written
