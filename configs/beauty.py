"""OpenP5 Amazon Beauty (../shared/data) with its short item text.

Usage: launch/train.py --config=configs/beauty.py[:cpu|:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "openp5-beauty"
  return experiment_config.get_variant(c, variant)
