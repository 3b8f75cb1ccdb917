"""Any registered dataset under any budget, named on the command line.

Usage: launch/train.py --config=configs/ilm.py:dataset=openp5-beauty,budget=full
(``dataset`` is a key of ilm_jax.data.DATASETS, ``budget`` one of cpu, small,
full; defaults ml-latest-small and cpu).
"""

from ilm_jax import experiment_config


def get_config(arg: str = ""):
  return experiment_config.get_config("ml-latest-small", arg)
