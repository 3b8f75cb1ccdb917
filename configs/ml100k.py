"""OpenP5 MovieLens-100K (../shared/data), titles joined from u.item.

Usage: launch/train.py --config=configs/ml100k.py[:cpu|:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "openp5-ml100k"
  return experiment_config.get_variant(c, variant)
