"""Default experiment: MovieLens latest-small (embedded), SmolLM2-135M frozen.

Sized so the whole pipeline (CF, baselines, stage 1, stage 2, evaluation)
runs in about a quarter of an hour on a 2-core CPU: the Q-Former keeps the
first two all-MiniLM-L6-v2 layers and stage 1 takes 200 steps of 16 rows
(the CPU recipe measured in the README). On an accelerator, raise
``qformer.num_layers`` (0 = all six), ``stage1.batch_size`` and the step
counts.

Usage: launch/train.py --config=configs/default.py[:small] --workdir=...
"""

from ilm_jax import experiment_config


def get_config(variant: str = ""):
  c = experiment_config.base_config()
  c.dataset.name = "ml-latest-small"  # shipped inside the package
  c.qformer.num_layers = 2  # first two MiniLM layers (CPU budget)
  c.stage1.batch_size = 16  # rows per objective (in-batch negatives)
  c.stage1.num_steps = 200  # about 5 minutes on 2 CPU cores
  c.stage1.warmup_steps = 20  # linear warmup
  c.stage1.learning_rate = 3e-4  # measured to lift item-text recall on CPU
  c.stage1.checkpoint_every = 100  # steps between checkpoints
  return experiment_config.get_variant(c, variant)
