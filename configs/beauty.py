"""OpenP5 Amazon Beauty (../shared/data) with its short item text.

Usage:
  launch/train.py --config=configs/beauty.py[:cpu|:small|:full] --workdir=...
(no suffix = :cpu; budgets in ilm_jax/experiment_config.py).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("openp5-beauty", arg)
