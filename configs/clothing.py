"""OpenP5 Amazon Clothing (../shared/data); items have no text.

Usage:
  launch/train.py --config=configs/clothing.py[:cpu|:small|:full] --workdir=...
(no suffix = :cpu; budgets in ilm_jax/experiment_config.py).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("openp5-clothing", arg)
