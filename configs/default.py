"""Default experiment: MovieLens latest-small (embedded), SmolLM2-135M frozen.

The README's main job. Sized so the whole pipeline (CF, baselines, stage 1,
stage 2, evaluation) runs in about a quarter of an hour on a 2-core CPU:
``experiment_config.cpu_budget`` (first two MiniLM layers in the Q-Former,
200 stage-1 steps of 16 rows, ``stage2.cpu_recipe``). On an accelerator
use ``--config=configs/default.py:full`` for the full-size defaults.

Usage: launch/train.py --config=configs/default.py[:small|:full] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "ml-latest-small"  # shipped inside the package
  if variant == "full":  # accelerator-scale defaults
    return c
  c = experiment_config.cpu_budget(c)
  return experiment_config.get_variant(c, variant)
