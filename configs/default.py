"""Default experiment: MovieLens latest-small (embedded), SmolLM2-135M frozen.

Usage: launch/train.py --config=configs/default.py[:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "ml-latest-small"  # shipped inside the package
  return experiment_config.get_variant(c, variant)
