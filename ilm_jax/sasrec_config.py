"""``config.sasrec``: the SASRec baseline's fields, as plain data.

Like ``ilm_jax.experiment_config`` this imports no JAX. The training-loop
fields come from the caller (``experiment_config.loop_config()``) so that
``experiment_config`` can build this section without a circular import:

  c.sasrec = sasrec_config(loop_config())

SASRec reads the experiment's ``dataset``, ``eval`` and ``mesh`` sections.
"""

from __future__ import annotations

import ml_collections


def sasrec_config(
  train: ml_collections.ConfigDict,
) -> ml_collections.ConfigDict:
  """SASRec's shape, loss and training recipe (the paper's, CPU-sized).

  Args:
    train: the shared loop's fields (``experiment_config.loop_config()``);
      modified in place and kept as ``train``.

  Returns:
    The ``sasrec`` section.
  """
  c = ml_collections.ConfigDict()
  c.dim = 64  # D: item embedding and hidden width
  c.num_blocks = 2  # causal self-attention blocks
  c.num_heads = 1  # attention heads
  c.dropout = 0.2  # on embeddings, attention weights and FFN
  # L: positions; histories keep their last L items (the paper: 200 on
  # MovieLens-1M, 50 on sparser data).
  c.max_len = 50
  # "softmax": cross-entropy over the whole catalogue; "bce": the paper's
  # binary cross-entropy against sampled negatives. On latest-small the
  # softmax learns far faster per step: validation HR@10 (filtered) .0967
  # after 400 steps against BCE's .0607 after 750 (plateauing near .06).
  c.loss = "softmax"
  c.num_negatives = 1  # sampled negatives per positive ("bce")
  c.batch_size = 128  # users per global batch
  c.train = train
  # Latest-small has 610 users, about 5 batches an epoch: 600 steps are 126
  # epochs, a few minutes on two CPU cores (full softmax over 3,650 items).
  c.train.num_steps = 600
  c.train.learning_rate = 1e-3  # the paper's Adam rate
  c.train.warmup_steps = 50
  c.train.adam_b2 = 0.98  # the paper's Adam beta2
  c.train.weight_decay = 0.0  # the paper uses plain Adam
  c.train.log_every = 50
  c.train.checkpoint_every = 500
  c.train.eval_every = 0  # validation HR@10 every N steps; 0 = at the end
  return c
