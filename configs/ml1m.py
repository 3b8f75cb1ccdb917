"""MovieLens-1M ratings (../shared/data/ml-1m), 5-core.

Usage:
  launch/train.py --config=configs/ml1m.py[:cpu|:small|:full] --workdir=...
(no suffix = :cpu; budgets in ilm_jax/experiment_config.py).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("ml-1m", arg)
