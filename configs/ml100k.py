"""OpenP5 MovieLens-100K (../shared/data), titles joined from u.item.

Usage:
  launch/train.py --config=configs/ml100k.py[:cpu|:small|:full] --workdir=...
(no suffix = :cpu; budgets in ilm_jax/experiment_config.py).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("openp5-ml100k", arg)
