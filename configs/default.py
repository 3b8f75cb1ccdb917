"""Default experiment: MovieLens latest-small (embedded in the package), the
README's main job.

Usage:
  launch/train.py --config=configs/default.py[:cpu|:small|:full] --workdir=...
(no suffix = :cpu; budgets in ilm_jax/experiment_config.py).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("ml-latest-small", arg)
