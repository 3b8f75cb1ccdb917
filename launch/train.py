r"""Trains and evaluates an Item-Language Model experiment.

Runs the stages of the pipeline (CF embeddings -> evaluation of classic
baselines -> stage 1 -> stage 2) for one config, each stage reading the
previous one's output from --workdir, so an interrupted run resumes.

Examples:
  # the main job on the embedded MovieLens latest-small
  python launch/train.py --config=configs/default.py --workdir=workdir/default
  # one-minute CPU variant of any config, one stage, a field overridden
  python launch/train.py --config=configs/ml100k.py:small --stage=cf \
      --config.cf.dim=32 --workdir=/tmp/ilm_small
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from ilm_jax import console, distributed
from ilm_jax.eval.report import markdown_table
from ilm_jax.pipeline import run as pipeline
from ilm_jax.pipeline import stage2_report
from ilm_jax.pipeline.baselines import summary_rows

_CONFIG = config_flags.DEFINE_config_file(
  "config",
  "configs/default.py",
  "Experiment config file (configs/<name>.py, optionally ':small' for the "
  "one-minute CPU variant). Override fields with --config.<field>=<value>.",
  lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
  "workdir", "workdir/default", "Where stages write (and resume from)."
)
_CACHE = console.define_compilation_cache()
_HOST_MEMORY = console.define_host_memory()
distributed.define_flags()
_STAGE = flags.DEFINE_enum(
  "stage",
  "all",
  pipeline.STAGES,
  "Stage to run: cf (ALS embeddings), eval (popularity and CF baselines), "
  "stage1 (Q-Former), stage2 (ILM on the frozen LLM), all (every available "
  "stage in order).",
)


def main(argv):
  console.start(argv, _CACHE.value, _HOST_MEMORY.value)
  config = _CONFIG.value
  results = pipeline.run(config, _WORKDIR.value, _STAGE.value)
  if not distributed.is_primary():
    return  # One copy of the tables, not one per host.
  name = config.dataset.name
  if "eval" in results:
    for split in config.eval.splits:
      for mode in ("unfiltered", "filtered"):
        rows = summary_rows(results["eval"], split, mode)
        print(markdown_table(rows, f"{name}: baselines, {split}, {mode}"))
  if "stage1" in results:
    metrics = {
      k: v
      for k, v in results["stage1"].items()
      if isinstance(v, float) and ("recall" in k or "heldout" in k)
    }
    print(markdown_table({"stage1": metrics}, f"{name}: stage-1 retrieval"))
  if "stage2" in results:
    print(stage2_report.tables(results["stage2"], name))
  logging.info("results written to %s", _WORKDIR.value)
  print(f"results: {os.path.join(_WORKDIR.value, 'results.json')}")


if __name__ == "__main__":
  app.run(main)
