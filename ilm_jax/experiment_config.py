"""The shared shape of every experiment config (configs/*.py build on it).

A config is an ``ml_collections.ConfigDict``; every field carries a comment.
Named variants, selected on the command line with
``--config=configs/<name>.py:<variant>`` (big_vision's ``runlocal`` idea):
``cpu`` is the README main job's 2-core-CPU budget on the full data
(``cpu_budget``), ``small`` runs in about a minute (``shrink_for_cpu``).
"""

from __future__ import annotations

import ml_collections

from ilm_jax.sharding.mesh import DEFAULT_RULES


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all experiments."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # master seed: splits of randomness derive from it

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "ml-latest-small"  # a key of ilm_jax.data.DATASETS
  c.dataset.path = ""  # file/dir of the raw data; "" = default location
  c.dataset.kcore = -1  # k-core filter; -1 = the dataset's default (5)
  c.dataset.min_rating = 0.0  # ratings below this are dropped (0 = keep all)
  c.dataset.max_history = 20  # history cap in prompts (OpenP5: 20)
  c.dataset.indexing = "random"  # OpenP5 item ids: "random" | "sequential"
  c.dataset.max_users = -1  # keep only the first N users (-1 = all); CPU runs

  c.cf = ml_collections.ConfigDict()
  c.cf.dim = 64  # CF embedding width d
  c.cf.reg = 1.0  # ALS L2 regularisation (chosen on ML-100K validation)
  c.cf.alpha = 10.0  # ALS confidence slope: c = 1 + alpha * count
  c.cf.sweeps = 15  # ALS sweeps (users then items)
  c.cf.solver = "cholesky"  # "cholesky" (exact) | "cg" (implicit-style)
  c.cf.cg_steps = 3  # conjugate-gradient steps per half-sweep (solver=cg)

  c.eval = ml_collections.ConfigDict()
  c.eval.ks = (5, 10)  # HR@k / NDCG@k cut-offs
  c.eval.splits = ("valid", "test")  # held-out splits to report
  c.eval.batch_size = 256  # users per full-ranking batch

  # The model stages own their fields; imported here so every experiment
  # config has them (and --config.<stage>.<field> overrides work).
  from ilm_jax.train import stage1, stage2

  c.qformer = stage1.qformer_config()  # Q-Former shape (stage 1)
  c.stage1 = stage1.stage1_config()  # stage-1 training
  c.stage2 = stage2.stage2_config()  # ILM on the frozen LLM

  c.mesh = ml_collections.ConfigDict()
  c.mesh.shape = (-1, 1, 1)  # devices on (data, fsdp, tensor); -1 = rest
  c.mesh.rules = DEFAULT_RULES  # logical axis -> mesh axes
  return c


def cpu_budget(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The README main job's 2-core-CPU recipe (``:cpu``; configs/default.py).

  Full datasets and models (all users, SmolLM2-135M, MiniLM-initialised
  Q-Former) with budgets cut to about a quarter of an hour for the whole
  pipeline on latest-small: the Q-Former keeps the first two MiniLM layers,
  stage 1 takes 200 steps of 16 rows (the README's measured CPU recipe) and
  stage 2 ``stage2.cpu_recipe``. Accelerator runs use the defaults.
  """
  c.qformer.num_layers = 2  # first two MiniLM layers
  c.stage1.batch_size = 16  # rows per objective (in-batch negatives)
  c.stage1.num_steps = 120  # about 3 minutes on 2 CPU cores
  c.stage1.warmup_steps = 20  # linear warmup
  c.stage1.learning_rate = 3e-4  # measured to lift item-text recall on CPU
  c.stage1.checkpoint_every = 100  # steps between checkpoints
  from ilm_jax.train import stage2

  stage2.cpu_recipe(c.stage2)
  return c


def shrink_for_cpu(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ~1 minute CPU variant of a config (``:small`` on the command line)."""
  c.dataset.max_users = min(c.dataset.max_users, 300) if (
    c.dataset.max_users > 0
  ) else 300  # fmt: skip
  c.cf.dim = 32
  c.cf.sweeps = 5
  c.qformer.num_layers = 2
  c.qformer.num_queries = 4
  c.qformer.max_text_length = 24
  c.stage1.num_steps = 30
  c.stage1.warmup_steps = 5
  c.stage1.checkpoint_every = 30
  c.stage1.batch_size = 16
  from ilm_jax.train import stage2

  stage2.shrink_stage2_for_cpu(c.stage2)
  return c


def get_variant(
  config: ml_collections.ConfigDict, variant: str | None
) -> ml_collections.ConfigDict:
  """Applies a named variant.

  "" = as configured, "cpu" = the main job's 2-core-CPU budget
  (``cpu_budget``), "small" = a CPU minute (``shrink_for_cpu``).
  """
  if not variant:
    return config
  if variant == "cpu":
    return cpu_budget(config)
  if variant == "small":
    return shrink_for_cpu(config)
  raise ValueError(
    f"unknown config variant {variant!r}; known: '', 'cpu', 'small'"
  )
