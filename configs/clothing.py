"""OpenP5 Amazon Clothing (../shared/data); items have no text.

Usage: launch/train.py --config=configs/clothing.py[:cpu|:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "openp5-clothing"
  return experiment_config.get_variant(c, variant)
