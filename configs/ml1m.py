"""MovieLens-1M ratings (../shared/data/ml-1m), 5-core.

Usage: launch/train.py --config=configs/ml1m.py[:cpu|:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "ml-1m"
  return experiment_config.get_variant(c, variant)
